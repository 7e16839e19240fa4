"""grpc.health.v1 against berthd with grpcio-health-checking's stubs and gRPC's default channel:
Check of the server ("") answers SERVING, Watch's first message is SERVING, and a service berthd
does not report on is NOT_FOUND. Input: BERTH_SOCKET. Prints one line when all three hold."""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import berth_client

SERVING = health_pb2.HealthCheckResponse.SERVING


def main() -> int:
    with berth_client.connect(os.environ["BERTH_SOCKET"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        checked = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        if checked.status != SERVING:
            print(f"Check: {checked.status}, want SERVING", file=sys.stderr)
            return 1
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = next(watch)
        watch.cancel()
        if first.status != SERVING:
            print(f"Watch: {first.status}, want SERVING", file=sys.stderr)
            return 1
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.v1.Service"), timeout=10)
            print("Check of an unknown service succeeded", file=sys.stderr)
            return 1
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                print(f"Check of an unknown service: {e.code()}, want NOT_FOUND", file=sys.stderr)
                return 1
    print("health ok: Check SERVING, Watch SERVING, unknown service NOT_FOUND")
    return 0


if __name__ == "__main__":
    sys.exit(main())
