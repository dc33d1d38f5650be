"""The shapes of what the API takes and gives, for validation and for the OpenAPI docs."""

from typing import Any

from pydantic import BaseModel, Field

from model_contract import ModelSummary

Image = list[list[float]] | list[float]


class PredictJSONRequest(BaseModel):
    """Exactly one of ``image`` and ``images``.

    Each image is 28x28 nested lists or a flat list of 784 numbers, white digit on black.
    Scale, judged per image: when every value is an integer and one exceeds 1, the image is
    0-255 grey levels; otherwise the values are floats in [0, 1] (so a 0/1 image is [0, 1]).
    """

    image: Image | None = Field(None, description="One image.")
    images: list[Image] | None = Field(None, description="A batch of images, answered in order.")


class Prediction(BaseModel):
    digit: int = Field(ge=0, le=9)
    confidence: float = Field(description="The probability of `digit`.")
    probabilities: list[float] = Field(description="Softmax over the digits 0-9.")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str = Field(description="The id of the model that answered, from its model card.")
    model_version: str = Field(description="The repository version that answered.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong with the request and how to fix it.")
    request_id: str | None = Field(description="The request's X-Request-ID, for the logs.")


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int | None]


class SummaryResponse(BaseModel):
    model: str
    model_version: str = Field(description="The repository version described.")
    summary: ModelSummary
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model_card: dict[str, Any]
    providers: list[str] = Field(description="onnxruntime execution providers in use, in order.")


class HealthResponse(BaseModel):
    status: str
