// What the example needs from an OCI image layout and the OCI runtime spec, apart from any API:
// reading the layout's manifest, config and layers, containerd's chain IDs, and a minimal spec.

import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";

/** containerd's chain ID: the identity of a stack of layers, from their diff IDs. */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const parent = out[out.length - 1];
    out.push(
      parent === undefined
        ? d
        : "sha256:" +
            createHash("sha256").update(`${parent} ${d}`).digest("hex"),
    );
  }
  return out;
}

/** OCI's name for this machine's architecture (GOARCH). */
export function ociArch(): string {
  const map: Record<string, string> = {
    x64: "amd64",
    arm64: "arm64",
    ia32: "386",
    ppc64: "ppc64le",
    s390x: "s390x",
  };
  return map[process.arch] ?? process.arch;
}

/** A minimal OCI runtime spec running `args` in rootfs/, in the shape containerd's defaults have. */
export function runtimeSpec(
  namespace: string,
  id: string,
  args: string[],
): object {
  const caps = [
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
    "CAP_AUDIT_WRITE",
  ];
  return {
    ociVersion: "1.0.2-dev",
    process: {
      user: { uid: 0, gid: 0 },
      args,
      env: [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      ],
      cwd: "/",
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: "rootfs" },
    hostname: id,
    mounts: [
      {
        destination: "/proc",
        type: "proc",
        source: "proc",
        options: ["nosuid", "noexec", "nodev"],
      },
      {
        destination: "/dev",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: [
          "nosuid",
          "noexec",
          "newinstance",
          "ptmxmode=0666",
          "mode=0620",
          "gid=5",
        ],
      },
      {
        destination: "/dev/shm",
        type: "tmpfs",
        source: "shm",
        options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
      },
      {
        destination: "/dev/mqueue",
        type: "mqueue",
        source: "mqueue",
        options: ["nosuid", "noexec", "nodev"],
      },
      {
        destination: "/sys",
        type: "sysfs",
        source: "sysfs",
        options: ["nosuid", "noexec", "nodev", "ro"],
      },
    ],
    linux: {
      resources: { devices: [{ allow: false, access: "rwm" }] },
      cgroupsPath: `/${namespace}/${id}`,
      namespaces: [
        { type: "pid" },
        { type: "ipc" },
        { type: "uts" },
        { type: "mount" },
        { type: "network" },
      ],
      maskedPaths: [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware",
      ],
      readonlyPaths: [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
      ],
    },
  };
}

export interface OciDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string };
}

/** An image read from an OCI layout: its blobs, and what unpacking needs from them. */
export interface Layout {
  name: string;
  manifest: OciDescriptor;
  config: OciDescriptor;
  layers: OciDescriptor[];
  diffIds: string[];
}

async function readJson(file: string): Promise<unknown> {
  return JSON.parse(await fs.readFile(file, "utf8"));
}

export function blobPath(dir: string, digest: string): string {
  const [alg, hex] = digest.split(":");
  if (!alg || !hex || !/^[a-z0-9]+$/.test(alg) || !/^[a-f0-9]+$/.test(hex)) {
    throw new Error(`bad digest ${JSON.stringify(digest)} in the layout`);
  }
  return path.join(dir, "blobs", alg, hex);
}

export async function readLayout(dir: string): Promise<Layout> {
  const index = (await readJson(path.join(dir, "index.json"))) as {
    manifests?: OciDescriptor[];
  };
  const manifests = index.manifests ?? [];
  const manifest =
    manifests.find(
      (m) =>
        m.platform?.os === "linux" && m.platform?.architecture === ociArch(),
    ) ?? manifests[0];
  if (!manifest) throw new Error(`${dir}/index.json lists no manifest`);
  if (manifest.mediaType !== "application/vnd.oci.image.manifest.v1+json") {
    throw new Error(`unsupported manifest media type ${manifest.mediaType}`);
  }
  const m = (await readJson(blobPath(dir, manifest.digest))) as {
    config: OciDescriptor;
    layers: OciDescriptor[];
  };
  const config = (await readJson(blobPath(dir, m.config.digest))) as {
    rootfs?: { diff_ids?: string[] };
  };
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== m.layers.length) {
    throw new Error(
      `the config lists ${diffIds.length} diff IDs for ${m.layers.length} layers`,
    );
  }
  const name =
    manifest.annotations?.["io.containerd.image.name"] ??
    `docker.io/library/busybox:${manifest.annotations?.["org.opencontainers.image.ref.name"] ?? "latest"}`;
  return { name, manifest, config: m.config, layers: m.layers, diffIds };
}
