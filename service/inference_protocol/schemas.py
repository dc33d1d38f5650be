"""The JSON of the Open Inference Protocol (KServe v2) REST API, and Triton's model config.

Request models are strict (no "3" for 3) but ignore unknown keys: clients such as Triton's
add fields of their own (``model_name`` in the request, for one). Tensor ``data`` stays
``Any`` so that validating a request never walks thousands of numbers: the codec in
``service.inference_protocol.codec`` does that with numpy.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The protocol's $parameters: an object of string, number or boolean values.
Parameters = dict[str, bool | int | float | str]


class ProtocolErrorResponse(BaseModel):
    error: str = Field(description="What is wrong with the request and how to fix it.")
    request_id: str | None = Field(description="The request's X-Request-ID, for the logs.")


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="Protocol extensions this server implements.")


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="A protocol datatype: FP32, UINT8, ...")
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch).")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ConfigTensor(BaseModel):
    name: str
    data_type: str = Field(description="Triton's TYPE_* name, e.g. TYPE_FP32.")
    dims: list[int] = Field(description="The shape without the batch dimension.")


class DynamicBatching(BaseModel):
    max_queue_delay_microseconds: int


class ConfigParameter(BaseModel):
    string_value: str


class ModelConfigResponse(BaseModel):
    """The fields of Triton's model configuration that describe this model."""

    name: str
    platform: str
    backend: str
    max_batch_size: int = Field(description="Most images in one request (its first dimension).")
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    dynamic_batching: DynamicBatching
    parameters: dict[str, ConfigParameter]


class RequestInput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = Field(None, description="Row-major values, flat or nested; absent when binary.")


class RequestOutput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(
        None, description="The outputs to return; all of them when absent."
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = Field(None, description="Row-major, flat; absent when sent as binary data.")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


# --- the model repository extension (Triton's) -----------------------------------------


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    ready: bool = Field(False, description="true: list only the versions that are READY.")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, LOADING or UNAVAILABLE (then see `reason`).")
    reason: str = Field("", description="Why the version is not ready, or how workers differ.")
    workers: dict[str, str] | None = Field(
        None, description="With several workers: each one's state of this version, by pid."
    )


class RepositoryLoadRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    parameters: dict[str, Any] | None = Field(
        None,
        description='Optional "config": a JSON string of Triton\'s model configuration that '
        'may hold only a "version_policy", e.g. {"version_policy": {"specific": {"versions": '
        "[2]}}}; without it the configured MNIST_VERSION_POLICY applies.",
    )


class RepositoryUnloadRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    parameters: dict[str, Any] | None = Field(
        None, description='Triton\'s "unload_dependents" is accepted; the model has none.'
    )


class RepositoryModelResponse(BaseModel):
    name: str
    ready_versions: list[str] = Field(description="The versions this worker serves now.")
