#!/usr/bin/env python3
"""An external client against `gpuslice serve`: Python grpcio with its reflection and health
packages. It learns the API from server reflection only (no generated stubs), checks health,
registers a model, infers, reads metrics, and checks an error code.

Usage: grpc_client.py ADDRESS   (e.g. 127.0.0.1:50051); exits non-zero on any failure.
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICE = "gpuslice.v1.Controller"


def main(address):
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health

    # Reflection: the service list, then the whole API from its descriptors.
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = [s.name for r in responses for s in r.list_services_response.service]
    assert SERVICE in services and "grpc.health.v1.Health" in services, services

    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName(SERVICE)

    def call(method_name, **fields):
        method = service.methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        rpc = channel.unary_unary(
            f"/{SERVICE}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return rpc(request_class(**fields), timeout=10)

    registered = call("RegisterModel", name="mobilenet_v3_large", slo_ms=15, max_batch=8,
                      profile_path="builtin:h100-cudagraph")
    assert registered.allocation.gpu_pct > 0, registered
    for _ in range(20):
        done = call("Infer", model="mobilenet_v3_large", payload=b"")
        assert done.timings.total_ms >= done.timings.inference_ms > 0, done
    models = call("ListModels").models
    assert [m.name for m in models] == ["mobilenet_v3_large"], models
    metrics = call("GetMetrics", name="mobilenet_v3_large")
    assert metrics.models[0].completed == 20, metrics
    try:
        call("Infer", model="no_such_model")
        raise AssertionError("Infer on an unknown model must fail")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    print("python grpcio client: health, reflection, register, 20 infers, metrics, NOT_FOUND: ok")


if __name__ == "__main__":
    main(sys.argv[1])
