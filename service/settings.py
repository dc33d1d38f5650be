"""Every knob of the service, read from the environment (prefix ``MNIST_``) or a ``.env`` file."""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.models.policy import POLICY_HELP, PolicyError, VersionPolicy
from service.models.session import ExecutionMode, GraphOptimization, SessionTuning


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MNIST_", env_file=".env", extra="ignore")

    model_repository: Path | None = Field(
        None,
        description="Model repository to serve and watch: DIR/mnist/<version>/model.onnx, "
        "as `mnist-train --repository DIR` publishes it. Unset: serve MNIST_MODEL_PATH.",
    )
    model_path: Path = Field(
        Path("models/mnist.onnx"),
        description="Without a repository: the one ONNX file to serve, as version 1.",
    )
    version_policy: str = Field(
        "latest:1", description=f"Which published versions to serve: {POLICY_HELP}."
    )
    repository_poll_s: float = Field(
        5.0,
        ge=0,
        description="Seconds between scans of the repository for new or removed versions; "
        "0: no polling (versions change only by model control).",
    )
    model_control: bool = Field(
        False,
        description="Allow POST /v2/repository/models/mnist/load and .../unload (Triton's "
        "explicit model control).",
    )
    worker_state_dir: Path | None = Field(
        None,
        description="Directory the workers of one server share model state through; "
        "mnist-serve sets it for its workers.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: CUDA when onnxruntime-gpu and a GPU are usable, else CPU. "
        "cuda: CUDA or refuse to start. cpu: CPU only.",
    )
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol over gRPC (Triton's is 8001), on "
        "MNIST_HOST; 0: no gRPC.",
    )
    workers: int = Field(
        0,
        ge=0,
        description="Worker processes, each with its own model and batcher; "
        "0: one per CPU available (Python serves one request at a time per process).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per event; json: one JSON object per line."
    )
    access_log: bool = Field(
        True, description="One log line per request and per gRPC call (uvicorn's is off)."
    )

    api_keys: str = Field(
        "", description="Comma-separated inference API keys; none: the API is open to anyone."
    )
    api_keys_file: Path | None = Field(None, description="A file of inference keys, one a line.")
    admin_api_keys: str = Field(
        "", description="Comma-separated admin keys: model control, and inference too."
    )
    admin_api_keys_file: Path | None = Field(None, description="A file of admin keys, one a line.")
    protect_metrics: bool = Field(
        False, description="/metrics takes a key too (when keys are set)."
    )
    protect_docs: bool = Field(
        False, description="/docs, /redoc and /openapi.json take a key too (when keys are set)."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins browsers may call the API from; none by default."
    )

    drain_delay_s: float = Field(
        2.0,
        ge=0,
        description="On SIGTERM: seconds to keep serving, not ready, so that load balancers "
        "stop sending before connections are refused.",
    )
    drain_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Then: the longest wait for requests in flight to finish before exiting.",
    )

    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a request's headers, from the connection (or the first "
        "byte of a next request) on; then the connection is closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for a whole request body once its headers are in; then 408.",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request line and headers (431 beyond)."
    )
    keep_alive_s: int = Field(
        5, ge=1, description="Seconds an idle keep-alive connection stays open between requests."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Connections one worker serves at once; requests on more get 503 at once.",
    )
    listen_backlog: int = Field(
        2048,
        ge=1,
        description="Per worker: connections the kernel holds, accepted but not yet taken by "
        "the worker (the listen backlog); capped by net.core.somaxconn.",
    )

    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime threads inside one operator; 0: CPUs available / workers."
    )
    inter_op_threads: int = Field(1, ge=1, description="onnxruntime threads across operators.")
    ort_graph_optimization: GraphOptimization = Field(
        "all", description="onnxruntime graph optimisation level (all: fusions and layouts)."
    )
    ort_execution_mode: ExecutionMode = Field(
        "sequential",
        description="sequential: one operator at a time; this chain of layers "
        "has nothing to run in parallel.",
    )
    ort_memory_arena: bool = Field(
        True, description="onnxruntime's CPU memory arena: reuses buffers across calls."
    )
    ort_tensorrt: bool = Field(
        False,
        description="Run on onnxruntime's TensorRT provider (CUDA machines); refuses to start "
        "when TensorRT is absent.",
    )
    ort_tensorrt_fp16: bool = Field(False, description="TensorRT in half precision.")
    ort_tensorrt_cache_dir: Path | None = Field(
        None, description="Writable directory for TensorRT's engine cache; unset: no cache."
    )

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_images_per_request: int = Field(1024, ge=1, description="Most images in one request.")
    max_image_pixels: int = Field(
        16_000_000,
        ge=784,
        description="Largest image file, width x height as its header says: bomb guard.",
    )
    max_image_bytes: int = Field(
        16_000_000,
        ge=784,
        description="Most memory one image's pixels may take once decoded, from its header "
        "(1 byte a pixel for grey, 4 for RGB(A)); big JPEGs count at the reduced scale "
        "they are decoded at.",
    )
    decode_concurrency: int = Field(
        0,
        ge=0,
        description="Large image files (over 1 MB decoded) decoded at once per worker; 0: "
        "CPUs available / workers. Smaller ones take no slot.",
    )
    decode_memory_bytes: int = Field(
        256_000_000,
        ge=784,
        description="Per worker: decoded image bytes admitted at once (decoding or waiting "
        "to); a request beyond gets 503 with Retry-After.",
    )

    batch_max_size: int = Field(
        256, ge=1, description="Most images in one onnxruntime call; 1 turns batching off."
    )
    batch_max_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long a batch waits for more requests; 0: it takes what queued up "
        "while the previous batch ran, so a lone request never waits.",
    )
    batch_inline_images: int = Field(
        8,
        ge=0,
        description="Batches of at most this many images run on the event loop, not on the "
        "inference thread, when the model runs on the CPU: faster than the hand-over for "
        "small batches (bench.ab); never on a GPU, whose calls wait for the device. A request "
        "this small that is the worker's only one in progress runs at once, in its own task, "
        "when no batch is running. 0: never.",
    )
    batch_queue_images: int = Field(
        8192,
        ge=1,
        description="Images of interactive requests waiting for inference before new ones get 503.",
    )
    batch_queue_bulk_images: int = Field(
        8192,
        ge=1,
        description="The same for bulk requests, queued apart: a flood of big batches fills "
        "only this queue.",
    )
    interactive_max_images: int = Field(
        8,
        ge=1,
        description="Requests of at most this many images are interactive: batches take them "
        "first, bulk keeps a quarter of the images.",
    )
    max_inflight_requests: int = Field(
        512,
        ge=1,
        description="Inference requests in progress per worker, REST and gRPC together, "
        "before new ones get 503 (gRPC: UNAVAILABLE), refused before their body is read.",
    )
    request_timeout_ms: float = Field(
        10_000,
        ge=0,
        description="Deadline of an inference request from its arrival: one still waiting "
        "for the model then gets 504 and is never run; 0: no deadline.",
    )

    @field_validator("version_policy")
    @classmethod
    def _policy_parses(cls, value: str) -> str:
        try:
            return str(VersionPolicy.parse(value))
        except PolicyError as exc:
            raise ValueError(str(exc)) from None

    def policy(self) -> VersionPolicy:
        return VersionPolicy.parse(self.version_policy)

    def origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def worker_processes(self) -> int:
        return self.workers or available_cpus()

    def onnx_intra_op_threads(self) -> int:
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, available_cpus() // self.worker_processes())

    def image_decode_concurrency(self) -> int:
        if self.decode_concurrency:
            return self.decode_concurrency
        return max(1, available_cpus() // self.worker_processes())

    def session_tuning(self) -> SessionTuning:
        return SessionTuning(
            intra_op_threads=self.onnx_intra_op_threads(),
            inter_op_threads=self.inter_op_threads,
            graph_optimization=self.ort_graph_optimization,
            execution_mode=self.ort_execution_mode,
            memory_arena=self.ort_memory_arena,
            tensorrt=self.ort_tensorrt,
            tensorrt_fp16=self.ort_tensorrt_fp16,
            tensorrt_cache_dir=self.ort_tensorrt_cache_dir,
        )


def available_cpus() -> int:
    """CPUs this process may really use: affinity, narrowed by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, int(quota) // int(period)))
