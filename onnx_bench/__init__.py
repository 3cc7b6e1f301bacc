"""Architectures as ONNX: export with checks."""
