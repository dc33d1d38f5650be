"""Model files for lifecycle tests: real ones published as versions, and broken ones."""

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from model_contract import MODEL_FILENAME
from training.publish import publish_version


def publish(repository: Path, model: Path | bytes) -> int:
    """Publish ``model`` (a file, or its bytes) as the repository's next version."""

    def build(directory: Path, version: int) -> None:
        target = directory / MODEL_FILENAME
        if isinstance(model, bytes):
            target.write_bytes(model)
        else:
            shutil.copyfile(model, target)

    return publish_version(repository, build)


def truncated(model: Path) -> bytes:
    data = model.read_bytes()
    return data[: len(data) // 2]


def with_wrong_signature(model: Path) -> bytes:
    """The same network, its output renamed: not the contract's ``probabilities``."""
    proto = onnx.load(model)
    proto.graph.output[0].name = "logits"
    for node in proto.graph.node:
        node.output[:] = ["logits" if o == "probabilities" else o for o in node.output]
    serialized: bytes = proto.SerializeToString()
    return serialized


def failing_its_self_test(model: Path) -> bytes:
    """Valid and well-described, but with other weights than the ones it was tested with."""
    proto = onnx.load(model)
    for initializer in proto.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype == np.float32 and weights.shape == (10,):  # the classifier's bias
            shifted = weights + np.arange(10, dtype=np.float32)
            initializer.CopyFrom(numpy_helper.from_array(shifted, initializer.name))
            serialized: bytes = proto.SerializeToString()
    return serialized
    raise AssertionError("the model has no classifier bias of shape (10,)")
