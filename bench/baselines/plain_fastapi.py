"""Plain FastAPI + onnxruntime, as a tutorial writes it: a pydantic body, one session.run
per request in FastAPI's thread pool, no batching. MNIST_MODEL_PATH names the model."""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
_session = ort.InferenceSession(os.environ["MNIST_MODEL_PATH"], providers=["CPUExecutionProvider"])
_input = _session.get_inputs()[0].name


class Digit(BaseModel):
    image: list[list[int]]


@app.post("/predict")
def predict(body: Digit) -> dict[str, list[dict[str, object]]]:
    pixels = np.asarray(body.image, dtype=np.float32).reshape(1, 28, 28, 1) / 255
    probabilities = _session.run(None, {_input: pixels})[0][0]
    return {
        "predictions": [
            {"digit": int(probabilities.argmax()), "probabilities": probabilities.tolist()}
        ]
    }
