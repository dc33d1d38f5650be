"""The service against raw onnxruntime, reproducibly: `python -m bench.benchmark --help`.

Measures raw onnxruntime in this process (the physical limit), then starts the real server
(`python -m service` on 127.0.0.1) once with dynamic batching and once without, drives each
with wrk for a bounded time per scenario, and prints and writes what it found: results.json,
results.png and, with --profile, a py-spy profile of the server under load.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python bench/benchmark.py`: make `bench`, `service` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu, loadgen, profiling, server_metrics
from bench.machine import machine_info
from bench.payloads import (
    Payload,
    PayloadError,
    binary_payload,
    check_answer,
    json_payload,
    load_test_digits,
    offline_data_dir,
    png_payload,
)
from bench.plot import plot
from bench.raw import Device, RawFigures, measure_raw
from bench.report import (
    NOISY_CORES,
    REFERENCE_BATCH,
    ScenarioResult,
    TargetVerdict,
    format_raw,
    format_table,
    format_targets,
    ratios,
    targets,
)
from bench.server import REPO_ROOT, RunningServer, ServerConfig, ServerError
from service.settings import Settings, available_cpus

JSON_CONCURRENCY = (1, 8, 32, 64)
PNG_CONCURRENCY = 32
BINARY_CONCURRENCY = (2, 4)
PROFILED_CONCURRENCY = 32
BATCHING, BASELINE = "batching", "no-batching"


@dataclasses.dataclass(frozen=True)
class Plan:
    model: Path
    device: Device
    duration_s: float
    warm_up_s: float
    raw_batch1_runs: int
    raw_seconds_per_batch: float
    configs: tuple[ServerConfig, ...]
    profile: bool
    wrk: str
    wrk_threads: int
    ready_timeout_s: float
    out: Path


@dataclasses.dataclass(frozen=True)
class Scenario:
    payload: Payload
    body_file: Path
    concurrency: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.benchmark",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s per scenario, short raw figures"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="uvicorn workers (MNIST_WORKERS); default: the service's own default "
        f"(now {Settings().worker_processes()} on this machine)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="MNIST_KEY=VALUE",
        help="a service setting for both configurations, e.g. MNIST_BATCH_MAX_DELAY_MS=0; "
        "repeatable",
    )
    parser.add_argument(
        "--configs",
        default=f"{BATCHING},{BASELINE}",
        help=f"which server configurations, comma-separated: {BATCHING} (the service's "
        f"settings), {BASELINE} (the same with MNIST_BATCH_MAX_SIZE=1)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"py-spy the server during an extra json c={PROFILED_CONCURRENCY} run",
    )
    parser.add_argument("--wrk", default=None, help="path to wrk (default: the one on PATH)")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    return parser.parse_args(argv)


class UsageError(Exception):
    """Something the user must fix before a run; the message says how."""


def make_plan(args: argparse.Namespace) -> Plan:
    model = (
        args.model if args.model.is_absolute() or args.model.exists() else REPO_ROOT / args.model
    )
    if not model.is_file():
        raise UsageError(
            f"no model at {args.model}: train one with\n"
            "  mnist-train --data-dir ../shared/data/mnist-offline --output models/mnist.onnx\n"
            "(or `.venv/bin/python -m training ...`), or pass --model PATH"
        )
    if args.duration < 1:
        raise UsageError("--duration must be at least 1 second (wrk counts whole seconds)")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    shared = _parse_env(args.env)
    if args.workers is not None:
        shared["MNIST_WORKERS"] = str(args.workers)
    configs = []
    for name in (n.strip() for n in args.configs.split(",") if n.strip()):
        if name == BATCHING:
            configs.append(ServerConfig(BATCHING, shared))
        elif name == BASELINE:
            configs.append(ServerConfig(BASELINE, {**shared, "MNIST_BATCH_MAX_SIZE": "1"}))
        else:
            raise UsageError(f"unknown configuration {name!r}: use {BATCHING} and/or {BASELINE}")
    if not configs:
        raise UsageError(f"--configs is empty: use {BATCHING} and/or {BASELINE}")
    out = args.out if args.out.is_absolute() else REPO_ROOT / args.out
    return Plan(
        model=model,
        device=args.device,
        duration_s=2.0 if args.quick else args.duration,
        warm_up_s=1.0 if args.quick else 2.0,
        raw_batch1_runs=300 if args.quick else 3000,
        raw_seconds_per_batch=0.5 if args.quick else 3.0,
        configs=tuple(configs),
        profile=args.profile,
        wrk=loadgen.find_wrk(args.wrk),
        wrk_threads=max(1, args.wrk_threads),
        ready_timeout_s=args.ready_timeout,
        out=out,
    )


def _parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("MNIST_"):
            raise UsageError(f"--env {item!r}: expected MNIST_KEY=VALUE, e.g. MNIST_WORKERS=2")
        env[key] = value
    return env


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)


def run_scenario(
    plan: Plan, server: RunningServer, config: str, scenario: Scenario, accuracy: float
) -> ScenarioResult:
    command = loadgen.wrk_command(
        plan.wrk,
        server.url + scenario.payload.path,
        scenario.body_file,
        scenario.payload.content_type,
        scenario.concurrency,
        plan.wrk_threads,
        plan.duration_s,
        timeout_s=10,
    )
    server_metrics.settle(server.url)
    metrics_before = server_metrics.scrape(server.url)
    server_before, machine_before = cpu.process_tree_cpu_s(server.pid), cpu.machine_cpu()
    load = loadgen.run_wrk(command, plan.duration_s)
    server_cpu = cpu.process_tree_cpu_s(server.pid) - server_before
    machine_busy = cpu.machine_cpu().busy_s - machine_before.busy_s
    metrics_after = server_metrics.scrape(server.url)
    view = None
    if metrics_before is not None and metrics_after is not None:
        view = server_metrics.difference(metrics_before, metrics_after)
    return ScenarioResult(
        config=config,
        payload=scenario.payload.name,
        concurrency=scenario.concurrency,
        images_per_request=scenario.payload.images,
        accuracy=accuracy,
        load=load,
        server_cpu_s=server_cpu,
        others_cpu_s=max(0.0, machine_busy - server_cpu - load.wrk_cpu_s),
        server=view,
    )


def server_settings(config: ServerConfig) -> Settings:
    """The settings the server will run with: the environment, then the configuration's."""
    overrides: dict[str, Any] = {k.removeprefix("MNIST_").lower(): v for k, v in config.env.items()}
    return Settings(**overrides)


def describe(result: ScenarioResult) -> str:
    load = result.load
    text = (
        f"{result.ok_requests_per_s:,.0f} req/s, {result.images_per_s:,.0f} images/s, "
        f"p50 {load.p50_ms:.2f} / p90 {load.p90_ms:.2f} / p99 {load.p99_ms:.2f} ms, "
        f"errors {load.errors}"
    )
    if load.errors:
        text += f" (non-200 by status {load.statuses}, socket {load.socket_errors})"
    if result.server is not None:
        text += f", mean batch {result.server.mean_batch:.1f}"
    return text


def run_config(
    plan: Plan, config: ServerConfig, scenarios: list[Scenario], progress: Progress
) -> tuple[list[ScenarioResult], profiling.ProfileSummary | None]:
    env_text = " ".join(f"{k}={v}" for k, v in config.env.items()) or "service defaults"
    progress(f"{config.name}: starting the server ({env_text}) ...")
    results: list[ScenarioResult] = []
    profile = None
    with RunningServer(
        plan.model,
        plan.device,
        config,
        plan.out / f"server-{config.name}.log",
        plan.ready_timeout_s,
    ) as server:
        progress(f"{config.name}: ready at {server.url} (pid {server.pid})")
        accuracy: dict[str, float] = {}
        for payload in dict.fromkeys(s.payload for s in scenarios):
            accuracy[payload.name] = check_answer(server.url, payload)
            progress(f"{config.name}: {payload.name} answered, {accuracy[payload.name]:.1%} right")
        warm = dataclasses.replace(plan, duration_s=plan.warm_up_s)
        # Not recorded: connections, arenas and caches settle before the first measured run.
        run_scenario(
            warm, server, config.name, dataclasses.replace(scenarios[0], concurrency=8), 1.0
        )
        for index, scenario in enumerate(scenarios, 1):
            progress(
                f"{config.name}: {scenario.payload.name} c={scenario.concurrency} "
                f"({index}/{len(scenarios)}), {plan.duration_s:g} s ..."
            )
            result = run_scenario(
                plan, server, config.name, scenario, accuracy[scenario.payload.name]
            )
            results.append(result)
            progress(f"{config.name}:   {describe(result)}")
        if plan.profile and config.name == BATCHING:
            profile = profile_server(plan, server, scenarios, progress)
    return results, profile


def profile_server(
    plan: Plan, server: RunningServer, scenarios: list[Scenario], progress: Progress
) -> profiling.ProfileSummary:
    """An extra json c=32 run under py-spy, apart from the measured one, which it would slow."""
    scenario = next(
        s for s in scenarios if s.payload.name == "json" and s.concurrency == PROFILED_CONCURRENCY
    )
    output = plan.out / f"profile-json-c{PROFILED_CONCURRENCY}.speedscope.json"
    progress(f"{BATCHING}: profiling json c={PROFILED_CONCURRENCY} with py-spy ...")
    recorder = profiling.start_recording(server.pid, plan.duration_s, output)
    time.sleep(0.5)  # py-spy attaches before the load starts
    result = run_scenario(plan, server, BATCHING, scenario, 1.0)
    profiling.finish_recording(recorder, output, timeout_s=plan.duration_s + 60)
    progress(f"{BATCHING}:   under py-spy: {describe(result)}")
    summary = profiling.summarize(output, plan.duration_s)
    text = profiling.format_summary(summary)
    (plan.out / f"profile-json-c{PROFILED_CONCURRENCY}.txt").write_text(text + "\n")
    print(text, flush=True)
    return summary


def build_scenarios(body_dir: Path) -> list[Scenario]:
    digits = load_test_digits(offline_data_dir())
    json_one = json_payload(digits.images[0], int(digits.labels[0]))
    png_one = png_payload(digits.images[0], int(digits.labels[0]))
    batch = binary_payload(digits.images[:REFERENCE_BATCH], digits.labels[:REFERENCE_BATCH])
    files: dict[str, Path] = {}
    for payload in (json_one, png_one, batch):
        files[payload.name] = body_dir / f"{payload.name}.body"
        files[payload.name].write_bytes(payload.body)
    return [
        *(Scenario(json_one, files["json"], c) for c in JSON_CONCURRENCY),
        Scenario(png_one, files["png"], PNG_CONCURRENCY),
        *(Scenario(batch, files[batch.name], c) for c in BINARY_CONCURRENCY),
    ]


@dataclasses.dataclass(frozen=True)
class RawRun:
    when: str
    figures: RawFigures
    others_cores: float  # CPU the rest of the machine used meanwhile: how far to trust it


def measure_raw_run(plan: Plan, when: str, progress: Progress) -> RawRun:
    # One server worker's threads (what a single request can get) and the whole machine's.
    per_worker = {server_settings(c).onnx_intra_op_threads() for c in plan.configs}
    threads = tuple(sorted({available_cpus(), *per_worker}))
    progress(f"raw onnxruntime ({when}), {plan.device}, intra-op threads {threads} ...")
    digits = load_test_digits(offline_data_dir()).images[:1024]
    machine_before, own_before = cpu.machine_cpu(), cpu.own_cpu_s()
    started = time.monotonic()
    figures = measure_raw(
        plan.model, plan.device, threads, digits, plan.raw_batch1_runs, plan.raw_seconds_per_batch
    )
    busy = cpu.machine_cpu().busy_s - machine_before.busy_s
    others = max(0.0, busy - (cpu.own_cpu_s() - own_before)) / (time.monotonic() - started)
    print(format_raw(figures), flush=True)
    progress(f"meanwhile the rest of the machine used {others:.0%} of a core")
    return RawRun(when, figures, others)


def to_json(
    plan: Plan,
    info: dict[str, Any],
    raw_runs: list[RawRun],
    raw: RawRun,
    results: list[ScenarioResult],
    verdicts: list[TargetVerdict],
    profile: profiling.ProfileSummary | None,
    elapsed_s: float,
) -> dict[str, Any]:
    rows = []
    for r in results:
        row = dataclasses.asdict(r)
        row.update(
            scenario=r.scenario,
            ok_requests_per_s=r.ok_requests_per_s,
            images_per_s=r.images_per_s,
            errors=r.load.errors,
            vs_raw=dataclasses.asdict(ratios(r, raw.figures)),
        )
        rows.append(row)
    return {
        "machine": info,
        "plan": {
            "model": str(plan.model),
            "device": plan.device,
            "duration_s": plan.duration_s,
            "configs": [dataclasses.asdict(c) for c in plan.configs],
            "wrk_threads": plan.wrk_threads,
        },
        "raw_onnxruntime": dataclasses.asdict(raw),
        "raw_onnxruntime_runs": [dataclasses.asdict(run) for run in raw_runs],
        "results": rows,
        "targets": [dataclasses.asdict(v) for v in verdicts],
        "profile": dataclasses.asdict(profile) if profile else None,
        "load_average_at_end": os.getloadavg(),
        "elapsed_s": elapsed_s,
    }


def run(plan: Plan, progress: Progress) -> int:
    plan.out.mkdir(parents=True, exist_ok=True)
    info = machine_info(plan.wrk)
    load = ", ".join(f"{v:.2f}" for v in info["load_average_at_start"])
    progress(f"machine: {info['cpus_usable']} usable CPUs, load average {load}; {plan.model}")
    raw_runs = [measure_raw_run(plan, "before the servers", progress)]
    results: list[ScenarioResult] = []
    profile = None
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as body_dir:
        scenarios = build_scenarios(Path(body_dir))
        for config in plan.configs:
            config_results, config_profile = run_config(plan, config, scenarios, progress)
            results.extend(config_results)
            profile = profile or config_profile
    raw_runs.append(measure_raw_run(plan, "after the servers", progress))
    # Other people's jobs only ever slow a measurement down: the quieter one is the limit.
    raw = min(raw_runs, key=lambda run: run.others_cores)
    verdicts = [v for c in plan.configs for v in targets(results, raw.figures, c.name)]
    elapsed = time.monotonic() - progress.started
    print(f"\nthe limit: the raw run {raw.when} (others used {raw.others_cores:.0%} of a core)")
    print(format_raw(raw.figures))
    print()
    print(format_table(results, raw.figures))
    print("\ntargets (issue 5):")
    print(format_targets(verdicts))
    document = to_json(plan, info, raw_runs, raw, results, verdicts, profile, elapsed)
    (plan.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    others = sum(r.others_cpu_s for r in results) / sum(r.load.duration_s for r in results)
    if max(others, raw.others_cores) > NOISY_CORES:
        print(
            f"\nWARNING: other processes used {others:.0%} of a core during the server runs and "
            f"{raw.others_cores:.0%} during the raw run: figures are low; rerun when the machine "
            "is quiet (see the 'others' column)"
        )
    title = (
        f"MNIST service vs raw onnxruntime ({raw.figures.provider}) - {info['cpu_model']}, "
        f"{info['cpus_usable']} CPUs - other processes used {others:.2f} cores on average "
        f"during the runs - {info['git_commit'][:12]}"
    )
    plot(results, raw.figures, title, plan.out / "results.png")
    progress(f"wrote {plan.out / 'results.json'} and {plan.out / 'results.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()
    try:
        plan = make_plan(args)
        return run(plan, progress)
    except (
        UsageError,
        loadgen.LoadError,
        PayloadError,
        ServerError,
        profiling.ProfileError,
    ) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
