// The example: imports a busybox OCI image layout through berthd's API, runs a container from it,
// reads its output through a FIFO, sees its exit both from Tasks.Wait and as a /tasks/exit event,
// and removes everything it created except the image.
//
// Inputs (environment): BERTH_SOCKET, BERTH_NAMESPACE, BERTH_IMAGE_LAYOUT (an OCI image-layout
// directory). Exits 0 on success, 1 with a message on any failure.

import { execFileSync } from "node:child_process";
import { createReadStream, promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type {
  CallOptions,
  ClientUnaryCall,
  Metadata,
  ServiceError,
} from "@grpc/grpc-js";
import { status as grpcStatus } from "@grpc/grpc-js";
import { Berth, connect, namespaced } from "./index";
import { TaskCreate, TaskExit } from "./gen/containerd/events/task";
import { Descriptor } from "./gen/containerd/types/descriptor";
import {
  WriteAction,
  WriteContentRequest,
  WriteContentResponse,
} from "./gen/containerd/services/content/v1/content";
import { Envelope } from "./gen/containerd/types/event";
import {
  CreateImageRequest,
  UpdateImageRequest,
} from "./gen/containerd/services/images/v1/images";
import { CreateContainerRequest } from "./gen/containerd/services/containers/v1/containers";
import { CreateTaskRequest } from "./gen/containerd/services/tasks/v1/tasks";
import {
  OciDescriptor,
  blobPath,
  chainIds,
  readLayout,
  runtimeSpec,
} from "./oci";

const LANG = "typescript";
const SNAPSHOTTER = "overlayfs";
const RUNTIME = "io.containerd.runc.v2";
const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const CREATE_TOPIC = "/tasks/create";
const EXIT_TOPIC = "/tasks/exit";
const WANT_STATUS = 3;
const WANT_OUTPUT = `hello from ${LANG}`;
/** containerd's client writes content in chunks of 1 MiB. */
const CHUNK = 1 << 20;

/** The 4-argument overload of a generated unary method (what `.bind` yields). */
type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** Calls a unary method; a failure names the method and carries the gRPC status. */
function call<Req, Res>(
  what: string,
  method: Unary<Req, Res>,
  request: Req,
  metadata: Metadata,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, metadata, {}, (err, res) => {
      if (err) reject(new Error(`${what}: ${err.message}`, { cause: err }));
      else resolve(res);
    });
  });
}

function isCode(err: unknown, code: grpcStatus): boolean {
  const cause = err instanceof Error ? err.cause : undefined;
  return (
    typeof cause === "object" &&
    cause !== null &&
    (cause as Partial<ServiceError>).code === code
  );
}

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

/**
 * Content.Write of one blob: its bytes in chunks, then a commit carrying the expected digest and
 * the labels that tell the garbage collector what the blob references. A blob already present
 * answers AlreadyExists, which is success.
 */
async function writeBlob(
  c: Berth,
  md: Metadata,
  file: string,
  desc: OciDescriptor,
  labels: Record<string, string>,
): Promise<void> {
  const data = await fs.readFile(file);
  if (data.length !== desc.size) {
    throw new Error(
      `${file}: ${data.length} bytes, the descriptor says ${desc.size}`,
    );
  }
  const ref = `${LANG}-example-${desc.digest}`;
  const stream = c.content.write(md);
  const base = { ref, total: desc.size, expected: desc.digest };
  for (let off = 0; off < data.length; off += CHUNK) {
    stream.write(
      WriteContentRequest.fromPartial({
        ...base,
        action: WriteAction.WRITE,
        offset: off,
        data: data.subarray(off, off + CHUNK),
      }),
    );
  }
  stream.write(
    WriteContentRequest.fromPartial({
      ...base,
      action: WriteAction.COMMIT,
      offset: data.length,
      labels,
    }),
  );
  stream.end();
  let last: WriteContentResponse | undefined;
  try {
    for await (const resp of stream as AsyncIterable<WriteContentResponse>)
      last = resp;
  } catch (err) {
    if ((err as Partial<ServiceError>).code === grpcStatus.ALREADY_EXISTS)
      return;
    throw new Error(`Content.Write ${desc.digest}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (last?.action !== WriteAction.COMMIT || last.digest !== desc.digest) {
    throw new Error(
      `Content.Write ${desc.digest}: the commit answered ${JSON.stringify(last)}`,
    );
  }
}

function toDescriptor(d: OciDescriptor): Descriptor {
  return Descriptor.fromPartial({
    mediaType: d.mediaType,
    digest: d.digest,
    size: d.size,
  });
}

/** Imports the layout's image; returns its name and the chain ID of its top layer. */
async function importImage(
  c: Berth,
  ns: string,
  lease: string,
  dir: string,
): Promise<{ name: string; top: string }> {
  const md = namespaced(ns, lease);
  const img = await readLayout(dir);
  const chain = chainIds(img.diffIds);
  const top = chain[chain.length - 1];
  if (top === undefined) throw new Error("the image has no layers");

  // Children first, so each label below names a blob that is already there.
  for (const [i, layer] of img.layers.entries()) {
    await writeBlob(c, md, blobPath(dir, layer.digest), layer, {
      "containerd.io/uncompressed": img.diffIds[i] ?? "",
    });
  }
  await writeBlob(c, md, blobPath(dir, img.config.digest), img.config, {
    [`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}`]: top,
  });
  const manifestLabels: Record<string, string> = {
    "containerd.io/gc.ref.content.config": img.config.digest,
  };
  img.layers.forEach(
    (l, i) =>
      (manifestLabels[`containerd.io/gc.ref.content.l.${i}`] = l.digest),
  );
  await writeBlob(
    c,
    md,
    blobPath(dir, img.manifest.digest),
    img.manifest,
    manifestLabels,
  );
  console.log(
    `wrote ${img.layers.length + 2} blobs (manifest ${img.manifest.digest})`,
  );

  const image = {
    name: img.name,
    labels: {},
    target: toDescriptor(img.manifest),
  };
  try {
    await call(
      "Images.Create",
      c.images.create.bind(c.images),
      CreateImageRequest.fromPartial({ image }),
      md,
    );
    console.log(`created image ${img.name}`);
  } catch (err) {
    if (!isCode(err, grpcStatus.ALREADY_EXISTS)) throw err;
    await call(
      "Images.Update",
      c.images.update.bind(c.images),
      UpdateImageRequest.fromPartial({ image, updateMask: ["target"] }),
      md,
    );
    console.log(`updated image ${img.name}`);
  }

  // Unpack: each layer applied onto a snapshot of its parents, committed under its chain ID.
  for (const [i, layer] of img.layers.entries()) {
    const chainId = chain[i] ?? "";
    const parent = i > 0 ? (chain[i - 1] ?? "") : "";
    try {
      await call(
        "Snapshots.Stat",
        c.snapshots.stat.bind(c.snapshots),
        { snapshotter: SNAPSHOTTER, key: chainId },
        md,
      );
      console.log(`layer ${i} already unpacked (${chainId})`);
      continue;
    } catch (err) {
      if (!isCode(err, grpcStatus.NOT_FOUND)) throw err;
    }
    const key = `extract-${process.pid}-${Date.now()} ${chainId}`;
    const { mounts } = await call(
      "Snapshots.Prepare",
      c.snapshots.prepare.bind(c.snapshots),
      { snapshotter: SNAPSHOTTER, key, parent, labels: {} },
      md,
    );
    const { applied } = await call(
      "Diff.Apply",
      c.diff.apply.bind(c.diff),
      { diff: toDescriptor(layer), mounts, payloads: {}, syncFs: false },
      md,
    );
    if (applied?.digest !== img.diffIds[i]) {
      throw new Error(
        `Diff.Apply of layer ${i} gave ${applied?.digest}, the config says ${img.diffIds[i]}`,
      );
    }
    await call(
      "Snapshots.Commit",
      c.snapshots.commit.bind(c.snapshots),
      { snapshotter: SNAPSHOTTER, name: chainId, key, labels: {}, parent: "" },
      md,
    );
    console.log(`unpacked layer ${i} into snapshot ${chainId}`);
  }
  return { name: img.name, top };
}

/**
 * Events.Subscribe to this namespace's task events, before the task is created. The response
 * headers prove nothing portable (containerd sends them only with the first event), so the task's
 * own /tasks/create event is what shows the subscription is live before the task starts.
 */
function subscribeTasks(
  c: Berth,
  ns: string,
): {
  created: (container: string) => Promise<void>;
  exited: (container: string) => Promise<TaskExit>;
  cancel: () => void;
} {
  const stream = c.events.subscribe(
    { filters: [`topic~="/tasks/",namespace==${JSON.stringify(ns)}`] },
    namespaced(ns),
  );
  const creates = new Set<string>();
  const exits: TaskExit[] = [];
  let waiter: (() => void) | undefined;
  let failure: Error | undefined;
  stream.on("data", (env: Envelope) => {
    if (env.namespace !== ns || !env.event) return;
    if (
      env.topic === CREATE_TOPIC &&
      env.event.typeUrl === "containerd.events.TaskCreate"
    )
      creates.add(TaskCreate.decode(env.event.value).containerId);
    else if (
      env.topic === EXIT_TOPIC &&
      env.event.typeUrl === "containerd.events.TaskExit"
    )
      exits.push(TaskExit.decode(env.event.value));
    else return;
    waiter?.();
  });
  stream.on("error", (err: ServiceError) => {
    if (err.code !== grpcStatus.CANCELLED)
      failure = new Error(`Events.Subscribe: ${err.message}`);
    waiter?.();
  });
  const until = async <T>(seen: () => T | undefined): Promise<T> => {
    for (;;) {
      const got = seen();
      if (got !== undefined) return got;
      if (failure) throw failure;
      await new Promise<void>((resolve) => (waiter = resolve));
    }
  };
  const created = async (container: string): Promise<void> => {
    await until(() => (creates.has(container) ? true : undefined));
  };
  const exited = (container: string) =>
    until(() => {
      const i = exits.findIndex((e) => e.containerId === container);
      return i >= 0 ? exits.splice(i, 1)[0] : undefined;
    });
  return { created, exited, cancel: () => stream.cancel() };
}

function withTimeout<T>(what: string, ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: nothing within ${ms / 1000}s`)),
      ms,
    );
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Reads a FIFO to its end. The open blocks (on libuv's thread pool) until the shim opens it. */
function readFifo(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    createReadStream(file)
      .on("data", (b) =>
        chunks.push(typeof b === "string" ? Buffer.from(b) : b),
      )
      .on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
      .on("error", reject);
  });
}

async function main(): Promise<void> {
  const socket = env("BERTH_SOCKET");
  const ns = env("BERTH_NAMESPACE");
  const layout = env("BERTH_IMAGE_LAYOUT");
  const id = `${LANG}-example`;
  const c = connect(socket);
  const md = namespaced(ns);
  const cleanups: Array<[string, () => Promise<unknown>]> = [];
  const fifoDir = await fs.mkdtemp(path.join(tmpdir(), `berth-${LANG}-`));
  cleanups.push([
    "remove the FIFO directory",
    () => fs.rm(fifoDir, { recursive: true }),
  ]);
  try {
    const { version } = await call(
      "Version.Version",
      c.version.version.bind(c.version),
      {},
      md,
    );
    console.log(`connected to berthd ${version} on ${socket}`);

    // The lease keeps what the import creates from the garbage collector until the image and
    // the container reference it; it expires on its own if this program dies first.
    const expire = new Date(Date.now() + 3600_000)
      .toISOString()
      .replace(/\.\d+Z$/, "Z");
    const { lease } = await call(
      "Leases.Create",
      c.leases.create.bind(c.leases),
      {
        id: `${LANG}-example-${process.pid}`,
        labels: { "containerd.io/gc.expire": expire },
      },
      md,
    );
    const leaseId = lease?.id ?? "";
    cleanups.push([
      "Leases.Delete",
      () =>
        call(
          "Leases.Delete",
          c.leases.delete.bind(c.leases),
          { id: leaseId, sync: false },
          md,
        ),
    ]);
    console.log(`created lease ${leaseId}`);
    const leased = namespaced(ns, leaseId);

    const image = await importImage(c, ns, leaseId, layout);

    await call(
      "Snapshots.Prepare",
      c.snapshots.prepare.bind(c.snapshots),
      { snapshotter: SNAPSHOTTER, key: id, parent: image.top, labels: {} },
      leased,
    );
    cleanups.push([
      "Snapshots.Remove",
      () =>
        call(
          "Snapshots.Remove",
          c.snapshots.remove.bind(c.snapshots),
          { snapshotter: SNAPSHOTTER, key: id },
          md,
        ),
    ]);
    console.log(`prepared snapshot ${id} on ${image.top}`);

    const spec = runtimeSpec(ns, id, [
      "sh",
      "-c",
      `echo ${WANT_OUTPUT}; exit ${WANT_STATUS}`,
    ]);
    await call(
      "Containers.Create",
      c.containers.create.bind(c.containers),
      CreateContainerRequest.fromPartial({
        container: {
          id,
          image: image.name,
          runtime: { name: RUNTIME },
          spec: {
            typeUrl: SPEC_TYPE_URL,
            value: Buffer.from(JSON.stringify(spec)),
          },
          snapshotter: SNAPSHOTTER,
          snapshotKey: id,
        },
      }),
      leased,
    );
    cleanups.push([
      "Containers.Delete",
      () =>
        call(
          "Containers.Delete",
          c.containers.delete.bind(c.containers),
          { id },
          md,
        ),
    ]);
    console.log(`created container ${id}`);

    const stdout = path.join(fifoDir, "stdout");
    execFileSync("mkfifo", ["-m", "0600", stdout]);
    const output = readFifo(stdout);
    const events = subscribeTasks(c, ns);
    cleanups.push(["cancel the subscription", async () => events.cancel()]);

    const { mounts } = await call(
      "Snapshots.Mounts",
      c.snapshots.mounts.bind(c.snapshots),
      { snapshotter: SNAPSHOTTER, key: id },
      md,
    );
    const created = await call(
      "Tasks.Create",
      c.tasks.create.bind(c.tasks),
      CreateTaskRequest.fromPartial({
        containerId: id,
        rootfs: mounts,
        stdout,
        // containerd 1.6's runc shim opens a stderr even when its path is empty (and fails);
        // sharing stdout's FIFO works with both daemons and keeps one stream to read.
        stderr: stdout,
      }),
      md,
    );
    cleanups.push([
      "Tasks.Delete",
      () =>
        call(
          "Tasks.Delete",
          c.tasks.delete.bind(c.tasks),
          { containerId: id },
          md,
        ),
    ]);
    console.log(`created task ${id} (pid ${created.pid})`);
    await withTimeout(`the ${CREATE_TOPIC} event`, 30_000, events.created(id));

    // Wait is called before Start so that the exit cannot be missed.
    const waited = call(
      "Tasks.Wait",
      c.tasks.wait.bind(c.tasks),
      { containerId: id, execId: "" },
      md,
    );
    waited.catch(() => undefined);
    await call(
      "Tasks.Start",
      c.tasks.start.bind(c.tasks),
      { containerId: id, execId: "" },
      md,
    );
    console.log(`started task ${id}`);

    const text = await withTimeout("the task's stdout", 30_000, output);
    const { exitStatus } = await withTimeout("Tasks.Wait", 30_000, waited);
    const event = await withTimeout(
      `the ${EXIT_TOPIC} event`,
      30_000,
      events.exited(id),
    );
    console.log(`output: ${text.trim()}`);
    console.log(
      `exit status ${exitStatus}; ${EXIT_TOPIC} event: status ${event.exitStatus}`,
    );
    if (text.trim() !== WANT_OUTPUT) {
      throw new Error(
        `expected output ${JSON.stringify(WANT_OUTPUT)}, got ${JSON.stringify(text)}`,
      );
    }
    if (exitStatus !== WANT_STATUS || event.exitStatus !== WANT_STATUS) {
      throw new Error(
        `expected exit status ${WANT_STATUS} from Wait and the event`,
      );
    }
  } finally {
    let failed = false;
    for (const [what, undo] of cleanups.reverse()) {
      try {
        await undo();
      } catch (err) {
        failed = true;
        console.error(`cleanup: ${what}: ${(err as Error).message}`);
      }
    }
    c.close();
    if (failed) process.exitCode = 1;
  }
  if (process.exitCode !== 1)
    console.log(`example ok: hello from ${LANG}, exit status ${WANT_STATUS}`);
}

main().catch((err: unknown) => {
  console.error(
    `${LANG} example failed: ${err instanceof Error ? err.message : String(err)}`,
  );
  process.exit(1);
});
