package dev.berth.client.example;

import com.google.gson.Gson;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * What the example needs from an OCI image layout and the OCI runtime spec, apart from any API:
 * reading the layout's manifest, config and layers, containerd's chain IDs, and a minimal spec.
 */
final class Oci {
  static final String MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json";
  private static final Pattern DIGEST = Pattern.compile("([a-z0-9]+):([a-f0-9]+)");
  private static final Gson GSON = new Gson();

  private Oci() {}

  /** A descriptor as OCI's JSON has it. */
  record Descriptor(String mediaType, String digest, long size, Map<String, String> annotations) {}

  /** An image read from a layout. */
  record Image(
      String name,
      Descriptor manifest,
      Descriptor config,
      List<Descriptor> layers,
      List<String> diffIds) {}

  /** The file of a blob; a digest that is not {@code alg:hex} is refused, never followed. */
  static Path blobPath(Path layout, String digest) throws IOException {
    var m = DIGEST.matcher(digest == null ? "" : digest);
    if (!m.matches()) {
      throw new IOException("bad digest \"" + digest + "\" in the layout");
    }
    return layout.resolve("blobs").resolve(m.group(1)).resolve(m.group(2));
  }

  private static <T> T readJson(Path file, Class<T> type) throws IOException {
    try {
      T value = GSON.fromJson(Files.readString(file, StandardCharsets.UTF_8), type);
      if (value == null) {
        throw new IOException(file + ": empty");
      }
      return value;
    } catch (JsonParseException e) {
      throw new IOException(file + ": " + e.getMessage(), e);
    }
  }

  private record Index(List<IndexEntry> manifests) {}

  private record IndexEntry(
      String mediaType,
      String digest,
      long size,
      Map<String, String> annotations,
      Map<String, String> platform) {}

  private record Manifest(Descriptor config, List<Descriptor> layers) {}

  private record Config(Rootfs rootfs) {}

  private record Rootfs(List<String> diff_ids) {}

  /**
   * Follows index.json to the manifest for this platform (or the only one), its config and layers.
   */
  static Image readLayout(Path layout) throws IOException {
    Index index = readJson(layout.resolve("index.json"), Index.class);
    List<IndexEntry> manifests = index.manifests() == null ? List.of() : index.manifests();
    IndexEntry entry =
        manifests.stream()
            .filter(
                m ->
                    m.platform() != null
                        && "linux".equals(m.platform().get("os"))
                        && arch().equals(m.platform().get("architecture")))
            .findFirst()
            .orElse(manifests.isEmpty() ? null : manifests.get(0));
    if (entry == null) {
      throw new IOException(layout + "/index.json lists no manifest");
    }
    if (!MANIFEST_MEDIA_TYPE.equals(entry.mediaType())) {
      throw new IOException("unsupported manifest media type " + entry.mediaType());
    }
    Manifest manifest = readJson(blobPath(layout, entry.digest()), Manifest.class);
    if (manifest.config() == null || manifest.layers() == null) {
      throw new IOException("manifest " + entry.digest() + " has no config or no layers");
    }
    Config config = readJson(blobPath(layout, manifest.config().digest()), Config.class);
    List<String> diffIds =
        config.rootfs() == null || config.rootfs().diff_ids() == null
            ? List.of()
            : config.rootfs().diff_ids();
    if (diffIds.size() != manifest.layers().size()) {
      throw new IOException(
          "the config lists "
              + diffIds.size()
              + " diff IDs for "
              + manifest.layers().size()
              + " layers");
    }
    Map<String, String> annotations = entry.annotations() == null ? Map.of() : entry.annotations();
    String name = annotations.get("io.containerd.image.name");
    if (name == null) {
      name =
          "docker.io/library/busybox:"
              + annotations.getOrDefault("org.opencontainers.image.ref.name", "latest");
    }
    var desc = new Descriptor(entry.mediaType(), entry.digest(), entry.size(), annotations);
    return new Image(name, desc, manifest.config(), manifest.layers(), diffIds);
  }

  /** containerd's chain IDs: the first is the diff ID, then sha256(parent + " " + diff ID). */
  static List<String> chainIds(List<String> diffIds) {
    List<String> out = new ArrayList<>();
    for (String d : diffIds) {
      out.add(out.isEmpty() ? d : "sha256:" + sha256Hex(out.get(out.size() - 1) + " " + d));
    }
    return out;
  }

  static String sha256Hex(String s) {
    try {
      MessageDigest md = MessageDigest.getInstance("SHA-256");
      return HexFormat.of().formatHex(md.digest(s.getBytes(StandardCharsets.UTF_8)));
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("every JVM has SHA-256", e);
    }
  }

  /** OCI's name for this machine's architecture (GOARCH). */
  static String arch() {
    String a = System.getProperty("os.arch", "");
    return switch (a) {
      case "amd64", "x86_64" -> "amd64";
      case "aarch64" -> "arm64";
      case "x86", "i386" -> "386";
      default -> a;
    };
  }

  private static Map<String, Object> mount(
      String destination, String type, String source, String... options) {
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("destination", destination);
    m.put("type", type);
    m.put("source", source);
    m.put("options", List.of(options));
    return m;
  }

  /**
   * A minimal OCI runtime spec running {@code args} in rootfs/, shaped like containerd's default.
   */
  static JsonObject runtimeSpec(String namespace, String id, List<String> args) {
    List<String> caps =
        List.of(
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE");
    Map<String, Object> process = new LinkedHashMap<>();
    process.put("user", Map.of("uid", 0, "gid", 0));
    process.put("args", args);
    process.put(
        "env", List.of("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    process.put("cwd", "/");
    process.put("capabilities", Map.of("bounding", caps, "effective", caps, "permitted", caps));
    process.put("rlimits", List.of(Map.of("type", "RLIMIT_NOFILE", "hard", 1024, "soft", 1024)));
    process.put("noNewPrivileges", true);

    Map<String, Object> linux = new LinkedHashMap<>();
    linux.put("resources", Map.of("devices", List.of(Map.of("allow", false, "access", "rwm"))));
    linux.put("cgroupsPath", "/" + namespace + "/" + id);
    linux.put(
        "namespaces",
        List.of("pid", "ipc", "uts", "mount", "network").stream()
            .map(t -> Map.of("type", t))
            .toList());
    linux.put(
        "maskedPaths", List.of("/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"));
    linux.put(
        "readonlyPaths",
        List.of("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"));

    Map<String, Object> spec = new LinkedHashMap<>();
    spec.put("ociVersion", "1.0.2-dev");
    spec.put("process", process);
    spec.put("root", Map.of("path", "rootfs"));
    spec.put("hostname", id);
    spec.put(
        "mounts",
        List.of(
            mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
            mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5"),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                "size=65536k"),
            mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
            mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro")));
    spec.put("linux", linux);
    return GSON.toJsonTree(spec).getAsJsonObject();
  }
}
