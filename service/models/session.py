"""One onnxruntime session of the digit model, checked against the contract before use."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from model_contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, ContractError, check_session

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]
GraphOptimization = Literal["disabled", "basic", "extended", "all"]
ExecutionMode = Literal["sequential", "parallel"]

_GRAPH_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXECUTION_MODE = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}


@dataclass(frozen=True)
class SessionTuning:
    """How onnxruntime runs the model; the defaults are the measured best on the CPU
    (``python -m bench.ort_options``)."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: GraphOptimization = "all"
    execution_mode: ExecutionMode = "sequential"
    memory_arena: bool = True
    tensorrt: bool = False
    tensorrt_fp16: bool = False
    # TensorRT builds an engine per shape for minutes: a cache in a writable directory
    # lets the next start (and the other workers) reuse it.
    tensorrt_cache_dir: Path | None = None

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = _GRAPH_OPTIMIZATION[self.graph_optimization]
        options.execution_mode = _EXECUTION_MODE[self.execution_mode]
        options.enable_cpu_mem_arena = self.memory_arena
        # Spinning pool threads would steal the cores that the event loop needs between
        # batches; a parked thread wakes in microseconds, which a batch easily repays.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return options


class ModelLoadError(Exception):
    """The model file cannot be served; ``reason`` says why, the message adds the path."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot load model {path}: {reason}")
        self.path = path
        self.reason = reason


class ModelSession:
    """One loaded model: run it with ``predict``; its metadata travels in the ONNX file."""

    def __init__(
        self,
        path: Path,
        device: Device = "auto",
        tuning: SessionTuning = SessionTuning(),
    ):
        self.path = path
        if not path.is_file():
            raise ModelLoadError(path, "no such file (train one with `mnist-train`)")
        try:
            self._session = ort.InferenceSession(
                str(path), tuning.session_options(), providers=_providers_for(device, tuning, path)
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises bare RuntimeError-likes for bad files
            raise ModelLoadError(path, f"not a valid ONNX model ({exc})") from exc
        self.providers: list[str] = self._session.get_providers()
        if device == "cuda" and self.providers[0] not in (CUDA, TENSORRT):
            raise ModelLoadError(
                path, f"MNIST_DEVICE=cuda but onnxruntime fell back to {self.providers}"
            )
        if tuning.tensorrt and self.providers[0] != TENSORRT:
            raise ModelLoadError(
                path, f"MNIST_ORT_TENSORRT=true but onnxruntime fell back to {self.providers}"
            )
        try:
            metadata = check_session(self._session)
        except ContractError as exc:
            raise ModelLoadError(path, str(exc)) from None
        self.summary: dict[str, Any] = metadata.summary.model_dump()
        self.card: dict[str, Any] = metadata.card.model_dump()
        self.model_id = metadata.card.id
        self._self_test = metadata.self_test

    @property
    def on_cpu(self) -> bool:
        return self.providers[0] == CPU

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 28, 28, 1) in [0, 1] -> float32 (N, 10) probabilities."""
        outputs = self._session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return np.asarray(outputs[0])

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 64)) -> None:
        # The first runs allocate arenas and pick kernels: pay for that before traffic does.
        for n in batch_sizes:
            self.predict(np.zeros((n, *IMAGE_SHAPE), np.float32))

    def self_test(self) -> None:
        """Run the training job's reference digits here, on this device; refuse other answers."""
        try:
            failure = self._self_test.failure(self.predict(self._self_test.pixels()))
        except ContractError as exc:
            failure = str(exc)
        if failure:
            raise ModelLoadError(self.path, failure)

    def io_specs(self) -> dict[str, list[dict[str, Any]]]:
        def spec(arg: Any) -> dict[str, Any]:
            shape = [d if isinstance(d, int) else None for d in arg.shape]
            return {"name": arg.name, "datatype": "float32", "shape": shape}

        return {
            "inputs": [spec(i) for i in self._session.get_inputs()],
            "outputs": [spec(o) for o in self._session.get_outputs()],
        }


Provider = str | tuple[str, dict[str, str]]


def _providers_for(device: Device, tuning: SessionTuning, path: Path) -> list[Provider]:
    available = ort.get_available_providers()
    if tuning.tensorrt:
        # Asked for by name: never a silent fall back to a slower provider.
        if device == "cpu" or TENSORRT not in available:
            raise ModelLoadError(
                path,
                f"MNIST_ORT_TENSORRT=true but this onnxruntime on MNIST_DEVICE={device} has no "
                f"TensorrtExecutionProvider (available: {available}); install onnxruntime-gpu "
                "with TensorRT's libraries, or turn MNIST_ORT_TENSORRT off",
            )
        options = {"trt_fp16_enable": str(tuning.tensorrt_fp16).lower()}
        if tuning.tensorrt_cache_dir is not None:
            options |= {
                "trt_engine_cache_enable": "true",
                "trt_engine_cache_path": str(tuning.tensorrt_cache_dir),
            }
        return [(TENSORRT, options), CUDA, CPU]
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
