"""The rows the service is measured against on the same cores: what its HTTP stack allows
(a bare ASGI app answering a constant) and the obvious way to serve the model (plain
FastAPI calling onnxruntime per request)."""
