"""The onnxruntime session for the digit model, and everything the ONNX file says about itself."""

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
IMAGE_SHAPE = (28, 28, 1)
CLASSES = 10
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelLoadError(Exception):
    """The model file cannot be served; the message names the path and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot load model {path}: {reason}")


class ModelSession:
    """One loaded model: run it with ``predict``; its metadata travels in the ONNX file."""

    def __init__(
        self,
        path: Path,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ):
        self.path = path
        if not path.is_file():
            raise ModelLoadError(path, "no such file (train one with `mnist-train`)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        # Spinning pool threads would steal the cores that the event loop needs between
        # batches; a parked thread wakes in microseconds, which a batch easily repays.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=_providers_for(device, path)
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises bare RuntimeError-likes for bad files
            raise ModelLoadError(path, f"not a valid ONNX model ({exc})") from exc
        self.providers: list[str] = self._session.get_providers()
        if device == "cuda" and self.providers[0] != CUDA:
            raise ModelLoadError(
                path, f"MNIST_DEVICE=cuda but onnxruntime fell back to {self.providers}"
            )
        _check_signature(self._session, path)
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.summary: dict[str, Any] = _json_metadata(metadata, "summary", path)
        self.card: dict[str, Any] = _json_metadata(metadata, "model_card", path)
        self.model_id = str(self.card.get("id", path.stem))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 28, 28, 1) in [0, 1] -> float32 (N, 10) probabilities."""
        outputs = self._session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return np.asarray(outputs[0])

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 64)) -> None:
        # The first runs allocate arenas and pick kernels: pay for that before traffic does.
        for n in batch_sizes:
            self.predict(np.zeros((n, *IMAGE_SHAPE), np.float32))

    def io_specs(self) -> dict[str, list[dict[str, Any]]]:
        def spec(arg: Any) -> dict[str, Any]:
            shape = [d if isinstance(d, int) else None for d in arg.shape]
            return {"name": arg.name, "datatype": "float32", "shape": shape}

        return {
            "inputs": [spec(i) for i in self._session.get_inputs()],
            "outputs": [spec(o) for o in self._session.get_outputs()],
        }


def _providers_for(device: str, path: Path) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise ModelLoadError(
            path,
            "MNIST_DEVICE=cuda but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {available}); install the `gpu` extra (onnxruntime-gpu)",
        )
    return [CPU]


def _check_signature(session: ort.InferenceSession, path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ModelLoadError(
            path,
            f"expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}",
        )
    if inputs[0].type != "tensor(float)" or list(inputs[0].shape[1:]) != list(IMAGE_SHAPE):
        raise ModelLoadError(
            path, f"input must be float32 [N, 28, 28, 1], is {inputs[0].type} {inputs[0].shape}"
        )
    if list(outputs[0].shape[1:]) != [CLASSES]:
        raise ModelLoadError(path, f"output must be [N, 10], is {outputs[0].shape}")


def _json_metadata(metadata: dict[str, str], key: str, path: Path) -> dict[str, Any]:
    if key not in metadata:
        raise ModelLoadError(
            path, f"metadata '{key}' is missing: export the model with mnist-train"
        )
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise ModelLoadError(path, f"metadata '{key}' is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(path, f"metadata '{key}' must be a JSON object")
    return value
