"""Calls a seedkv node the way a generic gRPC tool would: with no seedkv .proto at hand.

Uses Python's grpcio with grpcio-health-checking and grpcio-reflection, which the project
did not write. Checks, against the node at argv[1]:

- grpc.health.v1: the server ("") and seedkv.v1.Kv report SERVING;
- grpc.reflection lists every service, and gives the descriptors of seedkv.v1.Kv, from
  which this script builds the request types and calls Put then Get;
- a method or service nobody serves answers gRPC's UNIMPLEMENTED.

Prints one line per check; exits non-zero on the first failure.
"""

import re
import sys
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

EXPECTED_SERVICES = {
    "seedkv.v1.Kv",
    "seedkv.v1.Admin",
    "seedkv.v1.Raft",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def main():
    addr = sys.argv[1]
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)

    # The node brings grpc.health.v1 up to date every second: give it a few.
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "seedkv.v1.Kv"]:
        deadline = time.monotonic() + 10
        while True:
            request = health_pb2.HealthCheckRequest(service=service)
            reply = health.Check(request, timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            if time.monotonic() > deadline:
                fail(f"health of {service!r} is {reply.status} after 10 s")
            time.sleep(0.2)
        print(f"health {service!r}: SERVING")

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    missing = EXPECTED_SERVICES - services
    if missing:
        fail(f"reflection lacks {sorted(missing)}; lists {sorted(services)}")
    print(f"reflection lists {len(services)} services")

    pool = descriptor_pool.DescriptorPool(database)
    kv = pool.FindServiceByName("seedkv.v1.Kv")
    methods = {method.name: method for method in kv.methods}

    def call(name, fields):
        """Calls Kv/`name`, following "the leader is node N at ADDR" hints as a user would."""
        method = methods[name]
        request_type = message_factory.GetMessageClass(method.input_type)
        reply_type = message_factory.GetMessageClass(method.output_type)
        target = channel
        for _ in range(5):
            stub = target.unary_unary(
                f"/seedkv.v1.Kv/{name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=reply_type.FromString,
            )
            try:
                return stub(request_type(**fields), timeout=10)
            except grpc.RpcError as err:
                hint = re.search(r"the leader is node \d+ at (\S+)", err.details() or "")
                if err.code() != grpc.StatusCode.FAILED_PRECONDITION or not hint:
                    raise
                target = grpc.insecure_channel(hint.group(1))
        fail(f"{name} found no leader in 5 hops")

    put = call("Put", {"key": b"probe/reflected", "value": b"built from reflection"})
    if put.revision <= 0:
        fail(f"Put answered revision {put.revision}")
    got = call("Get", {"key": b"probe/reflected"})
    if got.value != b"built from reflection" or got.revision != put.revision:
        fail(f"Get answered {got}")
    print(f"Put then Get through reflected types: revision {put.revision}")

    for path in ["/seedkv.v1.Kv/NoSuchMethod", "/no.such.Service/Call"]:
        stub = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            stub(b"", timeout=5)
            fail(f"{path} answered")
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                fail(f"{path} answered {err.code()}: {err.details()}")
        print(f"{path}: UNIMPLEMENTED")
    print("ok")


if __name__ == "__main__":
    main()
