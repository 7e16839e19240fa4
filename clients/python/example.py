"""Import a busybox image into berthd through the API, run a container on it, check, clean up.

Imports the OCI image layout at BERTH_IMAGE_LAYOUT (content writes, image record, unpack under a
lease), runs ``sh -c 'echo hello from python; exit 3'`` in a container with its stdout on a FIFO,
checks the output, the exit status and the /tasks/exit event, then removes what it created.
Inputs: BERTH_SOCKET, BERTH_NAMESPACE, BERTH_IMAGE_LAYOUT. Exits non-zero on any failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
from containerd.events import task_pb2 as task_events
from containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from containerd.services.content.v1 import content_pb2, content_pb2_grpc
from containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from containerd.services.events.v1 import events_pb2, events_pb2_grpc
from containerd.services.images.v1 import images_pb2, images_pb2_grpc
from containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from containerd.types import descriptor_pb2
from google.protobuf import any_pb2

import berth_client

SNAPSHOTTER = "overlayfs"
RUNTIME = "io.containerd.runc.v2"
# containerd's type URL for a JSON OCI runtime spec (not a protobuf message).
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
CREATE_TYPE_URL = "containerd.events.TaskCreate"
EXIT_TYPE_URL = "containerd.events.TaskExit"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CHUNK = 1 << 20
WANT_EXIT = 3
WANT_OUTPUT = b"hello from python\n"


class ExampleError(Exception):
    pass


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ExampleError(f"{name} is not set")
    return value


def read_blob(layout: Path, digest: str) -> bytes:
    algo, _, hexdigest = digest.partition(":")
    if (
        algo != "sha256"
        or len(hexdigest) != 64
        or not all(c in "0123456789abcdef" for c in hexdigest)
    ):
        raise ExampleError(f"unsupported digest {digest!r}")
    return (layout / "blobs" / algo / hexdigest).read_bytes()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The names of the committed layer snapshots: the ChainID of each prefix of the layers."""
    chain: list[str] = []
    for d in diff_ids:
        if not chain:
            chain.append(d)
        else:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {d}".encode()).hexdigest())
    return chain


def code(e: grpc.RpcError) -> grpc.StatusCode | None:
    return e.code() if isinstance(e, grpc.Call) else None


class Api:
    """The stubs the example uses, on a channel scoped to one namespace (and a lease)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.content = content_pb2_grpc.ContentStub(channel)
        self.images = images_pb2_grpc.ImagesStub(channel)
        self.leases = leases_pb2_grpc.LeasesStub(channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self.diff = diff_pb2_grpc.DiffStub(channel)
        self.containers = containers_pb2_grpc.ContainersStub(channel)
        self.tasks = tasks_pb2_grpc.TasksStub(channel)
        self.events = events_pb2_grpc.EventsStub(channel)


def write_blob(api: Api, digest: str, data: bytes, labels: dict[str, str]) -> bool:
    """Content.Write in lock step: STAT, WRITE chunks, COMMIT with the expected digest and size,
    which the server verifies. Returns False when the blob was already there."""
    requests: queue.Queue[content_pb2.WriteContentRequest | None] = queue.Queue()
    responses: Iterator[content_pb2.WriteContentResponse] = api.content.Write(
        iter(requests.get, None)
    )
    ref = f"example-python-{digest}"
    total = len(data)

    def step(req: content_pb2.WriteContentRequest) -> None:
        requests.put(req)
        next(responses)

    try:
        try:
            step(
                content_pb2.WriteContentRequest(
                    action=content_pb2.STAT, ref=ref, total=total, expected=digest
                )
            )
        except grpc.RpcError as e:
            if code(e) == grpc.StatusCode.ALREADY_EXISTS:
                return False
            raise
        for off in range(0, total, CHUNK):
            chunk = data[off : off + CHUNK]
            step(
                content_pb2.WriteContentRequest(
                    action=content_pb2.WRITE, ref=ref, offset=off, data=chunk
                )
            )
        # The commit carries the offset reached: containerd reads offset 0 on a commit as "start
        # the ingest over" and would then find it empty.
        step(
            content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT,
                ref=ref,
                offset=total,
                total=total,
                expected=digest,
                labels=labels,
            )
        )
        return True
    finally:
        requests.put(None)


def import_image(api: Api, layout: Path) -> tuple[str, list[str]]:
    """Write the image's blobs, create its record and unpack its layers; returns the image name
    and the chain IDs of its layers."""
    index = json.loads((layout / "index.json").read_text())
    target = next(
        (m for m in index.get("manifests", []) if m.get("mediaType") == MANIFEST_TYPE), None
    )
    if target is None:
        raise ExampleError("index.json lists no image manifest")
    name = (
        target.get("annotations", {}).get("io.containerd.image.name")
        or "example.invalid/busybox:latest"
    )
    manifest = json.loads(read_blob(layout, target["digest"]))
    config = json.loads(read_blob(layout, manifest["config"]["digest"]))
    layers = manifest["layers"]
    diff_ids = config["rootfs"]["diff_ids"]
    if not layers or len(layers) != len(diff_ids):
        raise ExampleError(f"image has {len(layers)} layers and {len(diff_ids)} diff IDs")
    chain = chain_ids(diff_ids)

    # Labels tell garbage collection what each blob keeps alive, as containerd's client sets them.
    manifest_labels = {"containerd.io/gc.ref.content.config": manifest["config"]["digest"]}
    for i, layer in enumerate(layers):
        manifest_labels[f"containerd.io/gc.ref.content.l.{i}"] = layer["digest"]
    blobs = [
        (target, manifest_labels),
        (manifest["config"], {f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}": chain[-1]}),
    ] + [
        (layer, {"containerd.io/uncompressed": d})
        for layer, d in zip(layers, diff_ids, strict=True)
    ]
    for desc, labels in blobs:
        data = read_blob(layout, desc["digest"])
        if write_blob(api, desc["digest"], data, labels):
            print(f"content {desc['digest']} written ({len(data)} bytes)")
        else:
            print(f"content {desc['digest']} already present")

    image = images_pb2.Image(
        name=name,
        target=descriptor_pb2.Descriptor(
            media_type=target["mediaType"], digest=target["digest"], size=target["size"]
        ),
    )
    try:
        api.images.Create(images_pb2.CreateImageRequest(image=image))
    except grpc.RpcError as e:
        if code(e) != grpc.StatusCode.ALREADY_EXISTS:
            raise
        api.images.Update(images_pb2.UpdateImageRequest(image=image))
    print(f"image {name} created")

    for i, layer in enumerate(layers):
        unpack_layer(api, layer, chain, i, diff_ids[i])
    return name, chain


def unpack_layer(api: Api, layer: dict[str, Any], chain: list[str], i: int, diff_id: str) -> None:
    """Apply layer i on the snapshot of the layers below it and commit it under its chain ID."""
    try:
        api.snapshots.Stat(snapshots_pb2.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=chain[i]))
        print(f"snapshot {chain[i]} already unpacked")
        return
    except grpc.RpcError as e:
        if code(e) != grpc.StatusCode.NOT_FOUND:
            raise
    key = f"extract-{time.time_ns()}-{chain[i]}"
    parent = chain[i - 1] if i > 0 else ""
    prepared = api.snapshots.Prepare(
        snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=key, parent=parent)
    )
    try:
        applied = api.diff.Apply(
            diff_pb2.ApplyRequest(
                diff=descriptor_pb2.Descriptor(
                    media_type=layer["mediaType"], digest=layer["digest"], size=layer["size"]
                ),
                mounts=prepared.mounts,
            )
        ).applied
        if applied.digest != diff_id:
            raise ExampleError(
                f"applied layer has diff ID {applied.digest}, the config says {diff_id}"
            )
        api.snapshots.Commit(
            snapshots_pb2.CommitSnapshotRequest(snapshotter=SNAPSHOTTER, name=chain[i], key=key)
        )
    except BaseException:
        # Leave no half-extracted snapshot behind.
        api.snapshots.Remove(snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key))
        raise
    print(f"layer {layer['digest']} unpacked into snapshot {chain[i]}")


def spec(namespace: str, container_id: str) -> bytes:
    """A minimal OCI runtime spec of the shape containerd's client generates."""
    caps = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]  # fmt: skip

    def mount(dest: str, kind: str, source: str, *options: str) -> dict[str, Any]:
        return {"destination": dest, "type": kind, "source": source, "options": list(options)}

    return json.dumps(
        {
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": ["sh", "-c", "echo hello from python; exit 3"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": True,
            },
            "root": {"path": "rootfs"},
            "hostname": container_id,
            "mounts": [
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
                    "gid=5",
                ),  # fmt: skip
                mount(
                    "/dev/shm",
                    "tmpfs",
                    "shm",
                    "nosuid",
                    "noexec",
                    "nodev",
                    "mode=1777",
                    "size=65536k",
                ),
                mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
                mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
            ],
            "linux": {
                "cgroupsPath": f"/{namespace}/{container_id}",
                "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
                "maskedPaths": [
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/sched_debug",
                    "/sys/firmware",
                    "/proc/scsi",
                ],  # fmt: skip
                "readonlyPaths": [
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ],
            },
        }
    ).encode()


class Background(threading.Thread):
    """Runs fn in a daemon thread and keeps its result or exception."""

    def __init__(self, fn: Any) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to the joining thread
            self.error = e

    def get(self, timeout: float, what: str) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise ExampleError(f"timed out waiting for {what}")
        if self.error is not None:
            raise self.error
        return self.result


def run_container(api: Api, leased: Api, namespace: str, image: str, chain: list[str]) -> None:
    cid = f"example-python-{time.time_ns()}"
    leased.snapshots.Prepare(
        snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid, parent=chain[-1])
    )
    print(f"snapshot {cid} prepared")
    try:
        api.containers.Create(
            containers_pb2.CreateContainerRequest(
                container=containers_pb2.Container(
                    id=cid,
                    image=image,
                    runtime=containers_pb2.Container.Runtime(name=RUNTIME),
                    spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=spec(namespace, cid)),
                    snapshotter=SNAPSHOTTER,
                    snapshot_key=cid,
                )
            )
        )
        print(f"container {cid} created")
        try:
            run_task(api, namespace, cid)
        finally:
            api.containers.Delete(containers_pb2.DeleteContainerRequest(id=cid))
            print(f"container {cid} deleted")
    finally:
        api.snapshots.Remove(snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid))
        print(f"snapshot {cid} removed")


def run_task(api: Api, namespace: str, cid: str) -> None:
    with tempfile.TemporaryDirectory(prefix="berth-example-python-") as tmp:
        # The client creates the FIFOs and reads them; the shim opens the other ends.
        stdout = os.path.join(tmp, "stdout")
        os.mkfifo(stdout, 0o600)

        def read_output() -> bytes:
            # A blocking open: it returns once the shim opens the write end; EOF once it closes.
            with open(stdout, "rb") as f:
                return f.read()

        output = Background(read_output)
        output.start()

        # Subscribe before creating the task. The response headers prove nothing portable
        # (containerd sends them only with the first event), so the task's own /tasks/create
        # event is what shows the subscription is live before the task starts.
        filters = [f'topic~="/tasks/",namespace=={json.dumps(namespace)}']
        sub = api.events.Subscribe(events_pb2.SubscribeRequest(filters=filters))
        live = threading.Event()

        def exit_event() -> task_events.TaskExit:
            try:
                for envelope in sub:
                    topic, any_event = envelope.topic, envelope.event
                    if topic == "/tasks/create" and any_event.type_url == CREATE_TYPE_URL:
                        if task_events.TaskCreate.FromString(any_event.value).container_id == cid:
                            live.set()
                    elif topic == "/tasks/exit" and any_event.type_url == EXIT_TYPE_URL:
                        event = task_events.TaskExit.FromString(any_event.value)
                        if event.container_id == cid:
                            return event
                raise ExampleError("the event stream ended without /tasks/exit")
            finally:
                # Also wakes the waiter for /tasks/create when the stream fails.
                live.set()

        exited = Background(exit_event)
        exited.start()
        try:
            # containerd 1.6's runc shim opens a stderr even when its path is empty (and fails);
            # sharing stdout's FIFO works with both daemons and keeps one stream to read.
            created = api.tasks.Create(
                tasks_pb2.CreateTaskRequest(
                    container_id=cid, stdout=stdout, stderr=stdout, rootfs=mounts_of(api, cid)
                )
            )
            print(f"task {cid} created (pid {created.pid})")
            try:
                if not live.wait(30):
                    raise ExampleError("timed out waiting for the /tasks/create event")
                if not exited.is_alive():
                    exited.get(0, "the /tasks/create event")
                    raise ExampleError("the event stream ended before /tasks/create")
                api.tasks.Start(tasks_pb2.StartRequest(container_id=cid))
                print(f"task {cid} started")
                waited = api.tasks.Wait(tasks_pb2.WaitRequest(container_id=cid))
                print(f"task {cid} exited with status {waited.exit_status}")
                out = output.get(30, "the end of output on the stdout FIFO")
                print(f"output: {out!r}")
                event = exited.get(30, "the /tasks/exit event")
                print(
                    f"event /tasks/exit: container {event.container_id}, status {event.exit_status}"
                )
                if waited.exit_status != WANT_EXIT:
                    raise ExampleError(f"exit status {waited.exit_status}, want {WANT_EXIT}")
                if out != WANT_OUTPUT:
                    raise ExampleError(f"output {out!r}, want {WANT_OUTPUT!r}")
                if event.exit_status != WANT_EXIT:
                    raise ExampleError(
                        f"/tasks/exit has status {event.exit_status}, want {WANT_EXIT}"
                    )
                print("example ok: hello from python, exit status 3")
            finally:
                api.tasks.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid))
                print(f"task {cid} deleted")
        finally:
            sub.cancel()


def mounts_of(api: Api, key: str) -> list[Any]:
    return list(
        api.snapshots.Mounts(snapshots_pb2.MountsRequest(snapshotter=SNAPSHOTTER, key=key)).mounts
    )


def main() -> int:
    try:
        socket, namespace = env("BERTH_SOCKET"), env("BERTH_NAMESPACE")
        layout = Path(env("BERTH_IMAGE_LAYOUT"))
        with berth_client.connect(socket) as channel:
            api = Api(berth_client.scoped(channel, namespace))
            # The lease holds every blob and snapshot the import creates until the image record
            # and the container reference them; it expires on its own if this program dies.
            lease = f"example-python-{time.time_ns()}"
            expire = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            api.leases.Create(
                leases_pb2.CreateRequest(id=lease, labels={"containerd.io/gc.expire": expire})
            )
            print(f"lease {lease} created")
            try:
                leased = Api(berth_client.scoped(channel, namespace, lease))
                image, chain = import_image(leased, layout)
                run_container(api, leased, namespace, image, chain)
            finally:
                api.leases.Delete(leases_pb2.DeleteRequest(id=lease))
                print(f"lease {lease} deleted")
    except (ExampleError, grpc.RpcError, OSError, ValueError, KeyError) as e:
        detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.Call) else str(e)
        print(f"example failed: {type(e).__name__}: {detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
