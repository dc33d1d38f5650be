"""Batches over gRPC (and REST's v2, beside it) against onnxruntime alone, as a ratio.

The issue's target: gRPC binary batches of 256 at no less than 80 % of raw onnxruntime's
images/s on the CPU. Each round measures raw onnxruntime in this process (all CPUs, no
server traffic meanwhile), then each protocol against the real service, so that a machine
shared with others slows every figure of a round alike; min/median/max over the rounds.

    uv run python -m bench.grpc_bench --model models/mnist.onnx
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpc_client  # type: ignore[import-untyped]
import tritonclient.http as http_client  # type: ignore[import-untyped]

from bench.raw import as_model_input, measure_throughput, open_session
from bench.server import RunningServer, ServerConfig, free_port
from service.settings import available_cpus

Clients = Callable[[], Any]


_MAX_MESSAGE = 2**31 - 1  # tritonclient's own default


def _infer_loop(
    make_client: Callable[[], Any], module: Any, images: npt.NDArray[np.uint8], seconds: float
) -> Callable[[], float]:
    """One client's loop: images answered until ``seconds`` have passed."""

    def run() -> float:
        client = make_client()
        tensor = module.InferInput("image", list(images.shape), "UINT8")
        if module is http_client:
            tensor.set_data_from_numpy(images, binary_data=True)
        else:
            tensor.set_data_from_numpy(images)
        try:
            client.infer("mnist", [tensor])  # the connection, before timing
            done = 0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                result = client.infer("mnist", [tensor])
                done += len(result.as_numpy("probabilities"))
            return float(done)
        finally:
            client.close()

    return run


def measure_service(
    make_client: Callable[[], Any],
    module: Any,
    images: npt.NDArray[np.uint8],
    clients: int,
    seconds: float,
) -> float:
    """Images/s of ``clients`` concurrent clients, each sending the batch back to back."""
    loops = [_infer_loop(make_client, module, images, seconds) for _ in range(clients)]
    counts = [0.0] * clients

    def work(index: int) -> None:
        counts[index] = loops[index]()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def client_with_own_connection(target: str) -> Any:
    """A gRPC client on a TCP connection of its own, as separate client processes have.

    Within a process, gRPC shares one connection among channels to the same target: every
    benchmark client would then reach the same worker, since the kernel spreads
    connections, not calls, over the workers' sockets.
    """
    return grpc_client.InferenceServerClient(
        target,
        channel_args=[
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


def summary(values: list[float]) -> str:
    return (
        f"min {min(values):,.0f}  median {statistics.median(values):,.0f}  max {max(values):,.0f}"
    )


def ratios(values: list[float], raw: list[float]) -> list[float]:
    return [value / base for value, base in zip(values, raw, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure per round")
    parser.add_argument("--workers", type=int, default=0, help="MNIST_WORKERS; 0: one per CPU")
    parser.add_argument("--no-rest", action="store_true", help="gRPC only")
    args = parser.parse_args(argv)

    cpus = available_cpus()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, 28, 28, 1), dtype=np.uint8)
    session = open_session(args.model, "cpu", cpus)
    grpc_port = free_port()
    config = ServerConfig(
        "grpc",
        {
            "MNIST_GRPC_PORT": str(grpc_port),
            "MNIST_WORKERS": str(args.workers),
            "MNIST_ACCESS_LOG": "0",
        },
    )
    figures: dict[str, list[float]] = {"raw": [], "grpc": [], "rest": []}
    with (
        tempfile.TemporaryDirectory() as scratch,
        RunningServer(args.model, "cpu", config, Path(scratch) / "server.log", 60) as server,
    ):
        host = server.url.removeprefix("http://")
        protocols: list[tuple[str, Any, Clients]] = [
            (
                "grpc",
                grpc_client,
                lambda: client_with_own_connection(f"127.0.0.1:{grpc_port}"),
            )
        ]
        if not args.no_rest:
            protocols.append(("rest", http_client, lambda: http_client.InferenceServerClient(host)))
        for round_ in range(1, args.rounds + 1):
            raw = measure_throughput(
                session, cpus, as_model_input(images[..., 0]), args.batch, args.seconds
            )
            figures["raw"].append(raw.images_per_s)
            line = [f"round {round_}: raw {raw.images_per_s:,.0f}"]
            for name, module, make_client in protocols:
                value = measure_service(make_client, module, images, args.clients, args.seconds)
                figures[name].append(value)
                line.append(f"{name} {value:,.0f} ({value / raw.images_per_s:.0%})")
            print("  ".join(line) + " images/s", flush=True)
    print(
        f"\nbatch {args.batch}, {args.clients} clients, {args.seconds:g} s a figure, "
        f"{cpus} CPUs, workers {args.workers or cpus}, {args.rounds} rounds"
    )
    print(f"raw onnxruntime  images/s  {summary(figures['raw'])}")
    for name, _, _ in protocols:
        shares = ratios(figures[name], figures["raw"])
        print(f"{name:<16} images/s  {summary(figures[name])}")
        print(
            f"{name:<16} of raw    min {min(shares):.0%}  median "
            f"{statistics.median(shares):.0%}  max {max(shares):.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
