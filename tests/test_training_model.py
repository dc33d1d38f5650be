"""The reference architecture: the layer table of the issue, layer by layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.model import build_model, describe_model

# The seed's table from the issue: output shape and parameters of each layer.
EXPECTED_LAYERS = [
    ("Conv2D", [None, 26, 26, 32], 320),
    ("MaxPooling2D", [None, 13, 13, 32], 0),
    ("Conv2D", [None, 11, 11, 64], 18_496),
    ("MaxPooling2D", [None, 5, 5, 64], 0),
    ("Conv2D", [None, 3, 3, 64], 36_928),
    ("Flatten", [None, 576], 0),
    ("Dense", [None, 64], 36_928),
    ("Dense", [None, 10], 650),
]


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return build_model()


def test_layer_table_matches_the_reference(model: keras.Model) -> None:
    summary = describe_model(model)
    table = [(layer.type, layer.output_shape, layer.params) for layer in summary.layers]

    assert table == EXPECTED_LAYERS
    assert summary.total_params == 93_322
    assert summary.trainable_params == 93_322
    assert summary.non_trainable_params == 0
    assert model.count_params() == 93_322


def test_layer_names_are_stable_and_unique(model: keras.Model) -> None:
    names = [layer.name for layer in describe_model(model).layers]
    assert names == [
        "conv_1",
        "pool_1",
        "conv_2",
        "pool_2",
        "conv_3",
        "flatten",
        "dense",
        "classifier",
    ]
    assert [layer.name for layer in build_model().layers] == names  # not numbered per build


def test_activations_and_compilation(model: keras.Model) -> None:
    activations = [
        layer.activation.__name__ for layer in model.layers if hasattr(layer, "activation")
    ]
    assert activations == ["relu", "relu", "relu", "relu", "softmax"]
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    assert model.loss == "categorical_crossentropy"
    assert model.input_shape == (None, 28, 28, 1)


def test_output_is_a_probability_distribution(model: keras.Model) -> None:
    images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (4, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
