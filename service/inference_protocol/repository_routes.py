"""The Open Inference Protocol's model repository extension, as Triton serves it.

``index`` always answers; ``load`` and ``unload`` only with ``MNIST_MODEL_CONTROL=1``,
like Triton's explicit model-control mode. A load with a version policy in its config
(tritonclient's ``load_model("mnist", config=...)``) serves exactly what it selects, and
keeps serving what was there if none of it can be served.
"""

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from model_contract import MODEL_NAME
from service.dependencies import RepositoryDep, SettingsDep
from service.errors import InputError
from service.inference_protocol import codec as protocol
from service.inference_protocol.routes import ERRORS, ModelName, ProtocolRoute
from service.inference_protocol.schemas import (
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    RepositoryModelResponse,
    RepositoryUnloadRequest,
)
from service.models.policy import PolicyError, VersionPolicy
from service.settings import Settings

router = APIRouter(
    prefix="/v2/repository",
    tags=["model repository"],
    route_class=ProtocolRoute,
    responses={
        **ERRORS,
        403: {"model": ERRORS[400]["model"], "description": "Model control is off."},
    },
)


async def _controlled_model(
    settings: SettingsDep,
    model_name: ModelName,
) -> None:
    protocol.check_model(model_name)
    _check_control(settings)


def _check_control(settings: Settings) -> None:
    if not settings.model_control:
        raise InputError(
            "model control is off: start the server with MNIST_MODEL_CONTROL=1 to load and "
            "unload versions through the API; without it the server follows the repository "
            "and MNIST_VERSION_POLICY",
            403,
        )


ControlledModel = Annotated[None, Depends(_controlled_model)]


@router.post(
    "/index", response_model=list[RepositoryIndexEntry], summary="Every version and its state"
)
async def index(
    repository: RepositoryDep,
    request: Annotated[RepositoryIndexRequest | None, Body()] = None,
) -> list[RepositoryIndexEntry]:
    only_ready = request is not None and request.ready
    return [
        RepositoryIndexEntry(
            name=MODEL_NAME,
            version=str(entry.version),
            state=entry.state,
            reason=entry.reason,
            workers=None
            if entry.workers is None
            else {str(pid): state for pid, state in entry.workers.items()},
        )
        for entry in repository.index()
        if not only_ready or entry.state == "READY"
    ]


@router.post(
    "/models/{model_name}/load",
    response_model=RepositoryModelResponse,
    summary="Load the versions a policy selects (all workers follow within a poll interval)",
)
async def load(
    _: ControlledModel,
    repository: RepositoryDep,
    request: Annotated[RepositoryLoadRequest | None, Body()] = None,
) -> RepositoryModelResponse:
    policy = _policy_from(request.parameters if request else None)
    versions = await repository.load(policy)
    return RepositoryModelResponse(name=MODEL_NAME, ready_versions=[str(v) for v in versions])


@router.post(
    "/models/{model_name}/unload",
    response_model=RepositoryModelResponse,
    summary="Unload every version (the server is not ready until the next load)",
)
async def unload(
    _: ControlledModel,
    repository: RepositoryDep,
    request: Annotated[RepositoryUnloadRequest | None, Body()] = None,
) -> RepositoryModelResponse:
    await repository.unload()
    return RepositoryModelResponse(name=MODEL_NAME, ready_versions=[])


def _policy_from(parameters: dict[str, Any] | None) -> VersionPolicy | None:
    parameters = dict(parameters or {})
    config = parameters.pop("config", None)
    if parameters:
        raise InputError(f"load takes only the parameter 'config', got {sorted(parameters)}", 400)
    if config is None:
        return None
    try:
        document = json.loads(config) if isinstance(config, str) else None
    except json.JSONDecodeError as exc:
        raise InputError(f"parameter 'config' is not JSON ({exc})", 400) from None
    if not isinstance(document, dict) or set(document) - {"version_policy"}:
        raise InputError(
            "parameter 'config' must be a JSON object string whose only key is "
            '"version_policy", e.g. {"version_policy": {"specific": {"versions": [2]}}}',
            400,
        )
    if "version_policy" not in document:
        return None
    try:
        return VersionPolicy.from_triton(document["version_policy"])
    except PolicyError as exc:
        raise InputError(str(exc), 400) from None
