"""Loading the model: devices, and files that cannot be served."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.models.session import CUDA, TENSORRT, ModelLoadError, ModelSession, SessionTuning
from service.settings import Settings


def test_cpu_is_forced_by_device_cpu(trained_model_path: Path) -> None:
    session = ModelSession(trained_model_path, "cpu")
    assert session.providers == ["CPUExecutionProvider"]
    assert session.on_cpu  # small batches may run on the event loop


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_device_cuda_without_cuda_refuses_to_start(trained_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        ModelSession(trained_model_path, "cuda")


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_device_auto_without_cuda_uses_the_cpu(trained_model_path: Path) -> None:
    assert ModelSession(trained_model_path, "auto").providers == ["CPUExecutionProvider"]


def test_a_model_without_metadata_is_refused(trained_model_path: Path, tmp_path: Path) -> None:
    proto = onnx.load(trained_model_path)
    del proto.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(proto, stripped)
    with pytest.raises(ModelLoadError, match="metadata 'summary' is missing"):
        ModelSession(stripped, "cpu")


def test_a_model_with_other_tensor_names_is_refused(
    trained_model_path: Path, tmp_path: Path
) -> None:
    proto = onnx.load(trained_model_path)
    proto.graph.output[0].name = "logits"
    for node in proto.graph.node:
        node.output[:] = ["logits" if o == "probabilities" else o for o in node.output]
    renamed = tmp_path / "renamed.onnx"
    onnx.save(proto, renamed)
    with pytest.raises(ModelLoadError, match="output 'probabilities'"):
        ModelSession(renamed, "cpu")


@pytest.mark.skipif(TENSORRT in ort.get_available_providers(), reason="this has TensorRT")
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_tensorrt_asked_for_without_tensorrt_refuses_to_load(
    trained_model_path: Path, device: str
) -> None:
    with pytest.raises(ModelLoadError, match=r"MNIST_ORT_TENSORRT=true .* no Tensorrt"):
        ModelSession(trained_model_path, device, SessionTuning(tensorrt=True))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tuning",
    [
        SessionTuning(graph_optimization="disabled", memory_arena=False),
        SessionTuning(graph_optimization="basic", execution_mode="parallel", inter_op_threads=2),
    ],
    ids=["unoptimised-no-arena", "basic-parallel"],
)
def test_every_tuning_gives_the_same_probabilities(
    trained_model_path: Path, tuning: SessionTuning
) -> None:
    images = np.random.default_rng(7).random((16, 28, 28, 1), dtype=np.float32)
    reference = ModelSession(trained_model_path, "cpu").predict(images)
    tuned = ModelSession(trained_model_path, "cpu", tuning).predict(images)
    np.testing.assert_allclose(tuned, reference, atol=1e-5)


def test_the_ort_settings_reach_the_session_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_ORT_GRAPH_OPTIMIZATION", "basic")
    monkeypatch.setenv("MNIST_ORT_EXECUTION_MODE", "parallel")
    monkeypatch.setenv("MNIST_ORT_MEMORY_ARENA", "false")
    monkeypatch.setenv("MNIST_INTRA_OP_THREADS", "3")
    options = Settings().session_tuning().session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.enable_cpu_mem_arena is False
    assert options.intra_op_num_threads == 3


def test_a_server_asked_for_tensorrt_without_it_exits_with_one_line(
    trained_model_path: Path,
) -> None:
    if TENSORRT in ort.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT")
    env = {**os.environ, "MNIST_MODEL_PATH": str(trained_model_path), "MNIST_ORT_TENSORRT": "true"}
    env.pop("MNIST_MODEL_REPOSITORY", None)
    done = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "no TensorrtExecutionProvider" in done.stderr
    assert "Traceback" not in done.stderr
