"""The HTTP server: one protocol-agnostic dataplane behind thin protocol adapters.

dataplane.py      loaded models, readiness, metadata, limits, inference off the event loop
models.py         a bundle -> a served model (ONNX Runtime + tokenizers; never torch)
body.py           request bodies read under a byte limit (Content-Length and streamed size)
v2_codec.py       Open Inference Protocol v2 tensors (JSON and Triton's binary extension) <-> Python
v2_rest.py        /v2 routes (KServe v2 / Triton REST)
openai_routes.py  /v1/embeddings and /v1/models (OpenAI-compatible)
metrics.py        Prometheus metrics on a per-app registry, /metrics
errors.py         kiln errors -> HTTP status and the JSON error shape of each protocol
app.py            create_app(bundle, settings) -> ASGI app
server.py         run_server(bundle_dir, host, port): uvicorn
"""
