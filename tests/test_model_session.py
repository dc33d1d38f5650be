"""Loading the model: devices, and files that cannot be served."""

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from service.models.session import CUDA, ModelLoadError, ModelSession


def test_cpu_is_forced_by_device_cpu(trained_model_path: Path) -> None:
    assert ModelSession(trained_model_path, "cpu").providers == ["CPUExecutionProvider"]


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
