"""Pull an image through berthd's Transfer service, printing its progress.

Opens a progress stream on the Streaming service (its first message names it), asks Transfer to
move BERTH_IMAGE_REF from the registry into the image store with an unpack, prints each Progress
event as ``event name progress/total``, and exits non-zero unless the image was saved.
Inputs: BERTH_SOCKET, BERTH_NAMESPACE, BERTH_IMAGE_REF (a registry reachable over plain HTTP).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator

from containerd.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
from containerd.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from containerd.types import platform_pb2
from containerd.types.transfer import imagestore_pb2, progress_pb2, registry_pb2
from google.protobuf import any_pb2

import berth_client


def pack(msg: object) -> any_pb2.Any:
    """An Any with containerd's bare type URL (no ``type.googleapis.com/`` prefix)."""
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())  # type: ignore[attr-defined]


def main() -> int:
    socket, ns, ref = (
        os.environ[v] for v in ("BERTH_SOCKET", "BERTH_NAMESPACE", "BERTH_IMAGE_REF")
    )
    channel = berth_client.connect(socket)
    md = berth_client.headers(ns)

    # The progress stream: StreamInit first, then nothing more from us; the daemon ends it
    # when the transfer is over.
    stream_id = f"progress-{os.getpid()}"
    outbox: queue.Queue[any_pb2.Any | None] = queue.Queue()
    outbox.put(pack(streaming_pb2.StreamInit(id=stream_id)))

    def requests() -> Iterator[any_pb2.Any]:
        while (m := outbox.get()) is not None:
            yield m

    replies = streaming_pb2_grpc.StreamingStub(channel).Stream(requests(), metadata=md)
    next(replies)  # the daemon's acknowledgement: the stream is registered
    events: list[str] = []

    def read_progress() -> None:
        for a in replies:
            p = progress_pb2.Progress()
            p.ParseFromString(a.value)
            print(f"{p.event} {p.name} {p.progress}/{p.total}", flush=True)
            events.append(p.event)

    reader = threading.Thread(target=read_progress)
    reader.start()

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    platform = platform_pb2.Platform(os="linux", architecture=arch)
    source = registry_pb2.OCIRegistry(
        reference=ref, resolver=registry_pb2.RegistryResolver(default_scheme="http")
    )
    destination = imagestore_pb2.ImageStore(
        name=ref,
        platforms=[platform],
        unpacks=[imagestore_pb2.UnpackConfiguration(platform=platform, snapshotter="overlayfs")],
    )
    transfer_pb2_grpc.TransferStub(channel).Transfer(
        transfer_pb2.TransferRequest(
            source=pack(source),
            destination=pack(destination),
            options=transfer_pb2.TransferOptions(progress_stream=stream_id),
        ),
        metadata=md,
    )
    outbox.put(None)
    reader.join(timeout=30)
    if "saved" not in events:
        print(f"no 'saved' event among {events}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
