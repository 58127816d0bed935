"""Backends: loaded artifacts that run batches (ONNX Runtime for serving, PyTorch at build time)."""
