"""berth_client: connect Python programs to berthd (or containerd) over its unix socket.

The API itself is the code generated from berth's proto/ by ./build (modules such as
``containerd.services.tasks.v1.tasks_pb2_grpc``). This package adds only what a client of
containerd's v1 API needs beyond the stubs: a channel with gRPC's default options, and the two
headers that scope calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grpc

__all__ = ["LEASE_HEADER", "NAMESPACE_HEADER", "connect", "headers", "scoped"]

#: Names the namespace a call acts in; berthd refuses namespaced calls without it.
NAMESPACE_HEADER = "containerd-namespace"
#: Names a lease that holds what a call creates (content, snapshots) until the lease is deleted.
LEASE_HEADER = "containerd-lease"


def connect(socket: str) -> grpc.Channel:
    """A channel to the unix socket at ``socket``, with gRPC's default options."""
    return grpc.insecure_channel(f"unix:{socket}")


def headers(namespace: str, lease: str | None = None) -> list[tuple[str, str]]:
    """The metadata of a call in ``namespace`` (and under ``lease``), for a stub's ``metadata=``."""
    md = [(NAMESPACE_HEADER, namespace)]
    if lease:
        md.append((LEASE_HEADER, lease))
    return md


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Headers(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata to every call, of every kind, made through the channel."""

    def __init__(self, md: list[tuple[str, str]]) -> None:
        self._md = md

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        md = list(d.metadata or [])
        names = {k for k, _ in self._md}
        md = [(k, v) for k, v in md if k not in names] + self._md
        return _CallDetails(  # type: ignore[return-value]
            d.method,
            d.timeout,
            md,
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, cont: Callable[..., Any], d: Any, request: Any) -> Any:
        return cont(self._details(d), request)

    def intercept_unary_stream(self, cont: Callable[..., Any], d: Any, request: Any) -> Any:
        return cont(self._details(d), request)

    def intercept_stream_unary(self, cont: Callable[..., Any], d: Any, it: Iterator[Any]) -> Any:
        return cont(self._details(d), it)

    def intercept_stream_stream(self, cont: Callable[..., Any], d: Any, it: Iterator[Any]) -> Any:
        return cont(self._details(d), it)


def scoped(channel: grpc.Channel, namespace: str, lease: str | None = None) -> grpc.Channel:
    """A view of ``channel`` whose every call acts in ``namespace`` (and under ``lease``)."""
    return grpc.intercept_channel(channel, _Headers(headers(namespace, lease)))
