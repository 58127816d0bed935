"""The HTTP server: one protocol-agnostic dataplane behind thin protocol adapters.

dataplane.py      loaded models and versions, routing (canary), readiness, limits, inference off the loop
repository.py     bundles on disk by name and version; load / hot swap / unload; the repository index
models.py         a bundle -> a served model (ONNX Runtime + tokenizers; never torch)
body.py           request bodies read under a byte limit (Content-Length and streamed size)
v2_codec.py       Open Inference Protocol v2 tensors (JSON and Triton's binary extension) <-> Python
v2_rest.py        /v2 routes (KServe v2 / Triton REST), versions and the model repository extension
openai_routes.py  /v1/embeddings and /v1/models (OpenAI-compatible)
metrics.py        Prometheus metrics on a per-app registry, /metrics
errors.py         kiln errors -> HTTP status and the JSON error shape of each protocol
app.py            create_app(bundle, settings) -> ASGI app
server.py         run_server(paths, host, port, canaries): uvicorn
"""
