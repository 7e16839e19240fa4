// Unit tests of the hand-written parts: metadata helpers, chain IDs, layout reading, the spec.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import {
  LEASE_HEADER,
  NAMESPACE_HEADER,
  namespaced,
  unixTarget,
} from "../src/index";
import { chainIds, readLayout, runtimeSpec } from "../src/oci";

test("namespaced sets the namespace header, and the lease header only when given", () => {
  const md = namespaced("team-a");
  assert.deepEqual(md.get(NAMESPACE_HEADER), ["team-a"]);
  assert.deepEqual(md.get(LEASE_HEADER), []);
  assert.deepEqual(namespaced("team-a", "l1").get(LEASE_HEADER), ["l1"]);
});

test("unixTarget is grpc-js's unix: scheme", () => {
  assert.equal(
    unixTarget("/run/berth/berthd.sock"),
    "unix:/run/berth/berthd.sock",
  );
});

test("chain IDs follow containerd: the first is the diff ID, then sha256(parent + ' ' + diff ID)", () => {
  // Expected values computed with: printf 'sha256:1111 sha256:2222' | sha256sum, and so on.
  assert.deepEqual(chainIds(["sha256:1111", "sha256:2222", "sha256:3333"]), [
    "sha256:1111",
    "sha256:8a5f562ca739136d680300679c08c98cb940e94d04b0ac0063c6fcaddf427fbb",
    "sha256:e0bca14518ac44912b093f5fa729c550ba62093b0cd22e0f4cd88826e2aa94be",
  ]);
  assert.deepEqual(chainIds([]), []);
});

test("the runtime spec runs the args in rootfs with the usual namespaces", () => {
  const spec = runtimeSpec("ns", "c1", ["sh", "-c", "true"]) as {
    process: { args: string[] };
    root: { path: string };
    linux: { namespaces: { type: string }[]; cgroupsPath: string };
  };
  assert.deepEqual(spec.process.args, ["sh", "-c", "true"]);
  assert.equal(spec.root.path, "rootfs");
  assert.equal(spec.linux.cgroupsPath, "/ns/c1");
  assert.deepEqual(
    spec.linux.namespaces.map((n) => n.type),
    ["pid", "ipc", "uts", "mount", "network"],
  );
});

async function writeBlob(
  dir: string,
  body: object,
): Promise<{ digest: string; size: number }> {
  const bytes = Buffer.from(JSON.stringify(body));
  const hex = createHash("sha256").update(bytes).digest("hex");
  await writeFile(path.join(dir, "blobs", "sha256", hex), bytes);
  return { digest: `sha256:${hex}`, size: bytes.length };
}

test("readLayout follows index.json to the manifest, config and layers", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "berth-ts-test-"));
  try {
    await mkdir(path.join(dir, "blobs", "sha256"), { recursive: true });
    const config = await writeBlob(dir, {
      rootfs: { type: "layers", diff_ids: ["sha256:aa"] },
    });
    const layer = {
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      digest: "sha256:bb",
      size: 7,
    };
    const manifest = await writeBlob(dir, {
      schemaVersion: 2,
      config: {
        mediaType: "application/vnd.oci.image.config.v1+json",
        ...config,
      },
      layers: [layer],
    });
    await writeFile(
      path.join(dir, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            ...manifest,
            annotations: {
              "io.containerd.image.name": "example.org/busybox:1",
            },
          },
        ],
      }),
    );
    const img = await readLayout(dir);
    assert.equal(img.name, "example.org/busybox:1");
    assert.equal(img.manifest.digest, manifest.digest);
    assert.equal(img.config.digest, config.digest);
    assert.deepEqual(img.layers, [layer]);
    assert.deepEqual(img.diffIds, ["sha256:aa"]);

    // A digest that would leave blobs/ is refused, not followed.
    await writeFile(
      path.join(dir, "index.json"),
      JSON.stringify({
        manifests: [
          {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            digest: "sha256:../../x",
            size: 1,
          },
        ],
      }),
    );
    await assert.rejects(readLayout(dir), /bad digest/);
  } finally {
    await rm(dir, { recursive: true });
  }
});
