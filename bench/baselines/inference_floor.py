"""The floor for real work: the least a Python server on this stack must do per request.

A bare ASGI callable that reads the body, parses it with orjson, turns it into the model's
input with numpy, runs onnxruntime on the event loop (one intra-op thread per worker, as the
service's workers have), and answers the probabilities with orjson. No validation, no
batching, no middleware, no metrics or logs: nothing a service may skip. Between it and the
bare ASGI ceiling lies what the work itself costs (parse, inference, encode); between the
service and it, what the service's features cost. MNIST_MODEL_PATH names the model.
"""

import os
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_session = ort.InferenceSession(
    os.environ["MNIST_MODEL_PATH"], _options, providers=["CPUExecutionProvider"]
)
_input = _session.get_inputs()[0].name
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    pixels = np.asarray(orjson.loads(b"".join(chunks))["image"], dtype=np.float32)
    probabilities = _session.run(None, {_input: (pixels / 255).reshape(1, 28, 28, 1)})[0][0]
    answer = {
        "predictions": [{"digit": int(probabilities.argmax()), "probabilities": probabilities}]
    }
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send(
        {
            "type": "http.response.body",
            "body": orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
        }
    )
