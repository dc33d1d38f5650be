"""A reproducible benchmark of the MNIST service against raw onnxruntime (not a test)."""
