"""The reference convnet, written as one Sequential so the code looks like its diagram."""

from __future__ import annotations

import keras
from keras import layers

from model_contract import INPUT_NAME, LayerSummary, ModelSummary

OPTIMIZER = "rmsprop"
LOSS = "categorical_crossentropy"


def build_model() -> keras.Sequential:
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name=INPUT_NAME),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu", name="conv_1"),
            layers.MaxPooling2D(pool_size=(2, 2), name="pool_1"),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu", name="conv_2"),
            layers.MaxPooling2D(pool_size=(2, 2), name="pool_2"),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu", name="conv_3"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense"),
            layers.Dense(10, activation="softmax", name="classifier"),
        ],
        name="mnist_convnet",
    )
    model.compile(optimizer=OPTIMIZER, loss=LOSS, metrics=["accuracy"])
    return model


def _size(weights: list[keras.Variable]) -> int:
    total = 0
    for weight in weights:
        count = 1
        for dim in weight.shape:
            count *= int(dim)
        total += count
    return total


def describe_model(model: keras.Model) -> ModelSummary:
    """The layer table of ``model.summary()`` as data."""
    return ModelSummary(
        layers=[
            LayerSummary(
                name=layer.name,
                type=type(layer).__name__,
                output_shape=[None if dim is None else int(dim) for dim in layer.output.shape],
                params=int(layer.count_params()),
            )
            for layer in model.layers
        ],
        total_params=_size(model.weights),
        trainable_params=_size(model.trainable_weights),
        non_trainable_params=_size(model.non_trainable_weights),
    )
