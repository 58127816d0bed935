"""Open Inference Protocol v2 over gRPC (KServe v2 ``inference.GRPCInferenceService``, as Triton serves it).

grpc_predict_v2.proto         the service and messages, written from the public specification
grpc_predict_v2_pb2*.py/.pyi  generated from it by regen.py (do not edit; see regen.py)
codec.py                      protobuf messages <-> Python values (raw and typed tensor contents)
service.py                    the servicer over the dataplane, error -> status mapping, server factory

The server runs beside uvicorn on the same event loop and the same ``DataPlane`` (see ``serve/server.py``).
"""
