"""Calls berthd the way a Python program using grpcio does, with the library's default options.

Usage: client.py SOCKET NAMESPACE. Prints one line per call, "<call> <hex of the response>", so the
Rust test decodes the replies with its own generated messages; no generated Python code is needed.
"""

import sys

import grpc

VERSION = "/containerd.services.version.v1.Version/Version"
LIST_CONTAINERS = "/containerd.services.containers.v1.Containers/List"


def main() -> None:
    socket, namespace = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        # No serializers: requests and responses travel as raw protobuf bytes.
        version = channel.unary_unary(VERSION)(b"", timeout=20)
        print("version", version.hex())
        containers = channel.unary_unary(LIST_CONTAINERS)(
            b"", metadata=(("containerd-namespace", namespace),), timeout=20
        )
        print("containers", containers.hex())


if __name__ == "__main__":
    main()
