package dev.berth.client.example;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.Gson;
import com.google.gson.JsonObject;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Unit tests of the example's hand-written parts: chain IDs, layout reading, the spec. */
class OciTest {
  private static final Gson GSON = new Gson();

  @Test
  void chainIdsFollowContainerd() {
    // Expected values computed with: printf 'sha256:1111 sha256:2222' | sha256sum, and so on.
    assertEquals(
        List.of(
            "sha256:1111",
            "sha256:8a5f562ca739136d680300679c08c98cb940e94d04b0ac0063c6fcaddf427fbb",
            "sha256:e0bca14518ac44912b093f5fa729c550ba62093b0cd22e0f4cd88826e2aa94be"),
        Oci.chainIds(List.of("sha256:1111", "sha256:2222", "sha256:3333")));
    assertEquals(List.of(), Oci.chainIds(List.of()));
  }

  @Test
  void runtimeSpecRunsTheArgsInRootfs() {
    JsonObject spec = Oci.runtimeSpec("ns", "c1", List.of("sh", "-c", "true"));
    assertEquals(
        "[\"sh\",\"-c\",\"true\"]", spec.getAsJsonObject("process").get("args").toString());
    assertEquals("rootfs", spec.getAsJsonObject("root").get("path").getAsString());
    JsonObject linux = spec.getAsJsonObject("linux");
    assertEquals("/ns/c1", linux.get("cgroupsPath").getAsString());
    assertEquals(5, linux.getAsJsonArray("namespaces").size());
  }

  private static String blob(Path dir, Object body) throws IOException {
    byte[] bytes = GSON.toJson(body).getBytes(StandardCharsets.UTF_8);
    String hex = Oci.sha256Hex(new String(bytes, StandardCharsets.UTF_8));
    Files.write(dir.resolve("blobs/sha256").resolve(hex), bytes);
    return "sha256:" + hex;
  }

  @Test
  void readLayoutFollowsTheIndex(@TempDir Path dir) throws IOException {
    Files.createDirectories(dir.resolve("blobs/sha256"));
    String config = blob(dir, Map.of("rootfs", Map.of("diff_ids", List.of("sha256:aa"))));
    var layer =
        Map.of(
            "mediaType", "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest", "sha256:bb",
            "size", 7);
    String manifest =
        blob(
            dir,
            Map.of(
                "config",
                Map.of("mediaType", "application/vnd.oci.image.config.v1+json", "digest", config),
                "layers",
                List.of(layer)));
    Files.writeString(
        dir.resolve("index.json"),
        GSON.toJson(
            Map.of(
                "manifests",
                List.of(
                    Map.of(
                        "mediaType",
                        Oci.MANIFEST_MEDIA_TYPE,
                        "digest",
                        manifest,
                        "size",
                        1,
                        "annotations",
                        Map.of("io.containerd.image.name", "example.org/busybox:1"))))));
    Oci.Image img = Oci.readLayout(dir);
    assertEquals("example.org/busybox:1", img.name());
    assertEquals(manifest, img.manifest().digest());
    assertEquals(config, img.config().digest());
    assertEquals("sha256:bb", img.layers().get(0).digest());
    assertEquals(7, img.layers().get(0).size());
    assertEquals(List.of("sha256:aa"), img.diffIds());

    // A digest that would leave blobs/ is refused, not followed.
    Files.writeString(
        dir.resolve("index.json"),
        GSON.toJson(
            Map.of(
                "manifests",
                List.of(
                    Map.of(
                        "mediaType",
                        Oci.MANIFEST_MEDIA_TYPE,
                        "digest",
                        "sha256:../../x",
                        "size",
                        1)))));
    IOException e = assertThrows(IOException.class, () -> Oci.readLayout(dir));
    assertTrue(e.getMessage().contains("bad digest"), e.getMessage());
  }
}
