"""The training job: data, model, fit, evaluate, report, export to ONNX, verify.

TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when it is first imported; setting the quiet
default here, before any module of the package can import it, keeps its C++ start-up
chatter (CPU features, grappler sessions) out of the progress output. An explicit value
in the environment still wins.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
