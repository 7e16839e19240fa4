"""berth_client against a real gRPC server on a unix socket: the headers reach it on every kind
of call, and only on calls made through a scoped channel."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

import berth_client


def _seen(context: grpc.ServicerContext) -> bytes:
    md = dict(context.invocation_metadata())
    return f"{md.get('containerd-namespace')}|{md.get('containerd-lease')}".encode()


@pytest.fixture()
def socket() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "echo.sock")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: _seen(ctx)),
            "Stream": grpc.stream_stream_rpc_method_handler(lambda it, ctx: iter([_seen(ctx)])),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", handlers),))
        server.add_insecure_port(f"unix:{path}")
        server.start()
        try:
            yield path
        finally:
            server.stop(None)


def test_headers() -> None:
    assert berth_client.headers("ns1") == [("containerd-namespace", "ns1")]
    assert berth_client.headers("ns1", "l1") == [
        ("containerd-namespace", "ns1"),
        ("containerd-lease", "l1"),
    ]


@pytest.mark.parametrize(
    ("namespace", "lease", "want"),
    [(None, None, b"None|None"), ("ns1", None, b"ns1|None"), ("ns1", "l1", b"ns1|l1")],
)
def test_scoped_channel_sends_the_headers(
    socket: str, namespace: str | None, lease: str | None, want: bytes
) -> None:
    with berth_client.connect(socket) as channel:
        ch = channel if namespace is None else berth_client.scoped(channel, namespace, lease)
        unary = ch.unary_unary("/t.Echo/Unary")
        stream = ch.stream_stream("/t.Echo/Stream")
        assert unary(b"") == want
        assert list(stream(iter([b""]))) == [want]


def test_scoped_replaces_a_header_given_per_call(socket: str) -> None:
    with berth_client.connect(socket) as channel:
        unary = berth_client.scoped(channel, "ns1").unary_unary("/t.Echo/Unary")
        assert unary(b"", metadata=[("containerd-namespace", "other")]) == b"ns1|None"
