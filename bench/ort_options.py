"""onnxruntime's session options, measured against each other: where the defaults come from.

    .venv/bin/python -m bench.ort_options --model models/mnist.onnx [--runs 5]

Each option set builds its session exactly as the service does (``SessionTuning``), then
single-image latency and batch-256 throughput are measured on real test digits. The sets take
turns, run after run, so that a noisy neighbour slows them all alike; every figure is printed
as min/median/max over the runs and as a ratio to the service's defaults.
"""

import argparse
import statistics
import sys
from pathlib import Path

import onnxruntime as ort

from bench.payloads import load_test_digits, offline_data_dir
from bench.raw import as_model_input, measure_batch1, measure_throughput
from service.models.session import CPU, SessionTuning

CANDIDATES = {
    "default (all, sequential, arena)": SessionTuning(),
    "no memory arena": SessionTuning(memory_arena=False),
    "graph optimisation: extended": SessionTuning(graph_optimization="extended"),
    "graph optimisation: basic": SessionTuning(graph_optimization="basic"),
    "graph optimisation: disabled": SessionTuning(graph_optimization="disabled"),
    "parallel execution, 2 inter-op": SessionTuning(execution_mode="parallel", inter_op_threads=2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--runs", type=int, default=5, help="rounds over every option set")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (one worker's)")
    parser.add_argument("--calls", type=int, default=2000, help="single-image calls per run")
    parser.add_argument("--seconds", type=float, default=1.0, help="batch-256 time per run")
    args = parser.parse_args()

    images = as_model_input(load_test_digits(offline_data_dir()).images[:2048])
    sessions = {
        name: ort.InferenceSession(
            str(args.model),
            SessionTuning(**{**vars(tuning), "intra_op_threads": args.threads}).session_options(),
            providers=[CPU],
        )
        for name, tuning in CANDIDATES.items()
    }
    p50_us: dict[str, list[float]] = {name: [] for name in sessions}
    batch_images_s: dict[str, list[float]] = {name: [] for name in sessions}
    for run in range(1, args.runs + 1):
        for name, session in sessions.items():
            latency = measure_batch1(session, args.threads, images, args.calls)
            p50_us[name].append(latency.p50_ms * 1000)
            batch = measure_throughput(session, args.threads, images, 256, args.seconds)
            batch_images_s[name].append(batch.images_per_s)
        print(f"run {run}/{args.runs} done", file=sys.stderr, flush=True)

    default = next(iter(CANDIDATES))
    base_p50 = statistics.median(p50_us[default])
    base_batch = statistics.median(batch_images_s[default])
    print(f"\n{args.threads} intra-op thread(s), {args.runs} runs, min/median/max")
    print(f"{'options':34} {'batch-1 p50 us':>22} {'x':>5}   {'batch-256 images/s':>26} {'x':>5}")
    for name in sessions:
        p50, images_s = p50_us[name], batch_images_s[name]
        print(
            f"{name:34} {_spread(p50, '.0f'):>22} {statistics.median(p50) / base_p50:5.2f}   "
            f"{_spread(images_s, ',.0f'):>26} {statistics.median(images_s) / base_batch:5.2f}"
        )


def _spread(values: list[float], spec: str) -> str:
    return "/".join(format(v, spec) for v in (min(values), statistics.median(values), max(values)))


if __name__ == "__main__":
    main()
