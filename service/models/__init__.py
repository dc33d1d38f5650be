"""The service's side of models: the repository scan and version policy, one served version
(session + batcher), and the swap between versions. No TensorFlow: the ONNX file says all."""
