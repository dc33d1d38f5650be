"""Figures to verdicts: ratios to raw onnxruntime, the issue's targets, and the printed table."""

import statistics
from dataclasses import dataclass

from bench.loadgen import LoadFigures
from bench.raw import RawFigures
from bench.server_metrics import ServerView

# The targets (issue 5), on this machine with the load generator running beside.
TARGET_C32_RPS = 3000.0
TARGET_C32_P99_MS = 20.0
TARGET_C1_P50_MS = 0.5
TARGET_BATCH_SHARE_OF_RAW = 0.60
REFERENCE_BATCH = 256
NOISY_CORES = 0.2  # CPU used by other processes above which a run's figures are suspect


@dataclass(frozen=True)
class ScenarioResult:
    config: str
    payload: str  # json, png, binary256
    concurrency: int
    images_per_request: int
    accuracy: float  # of the one checked answer before the load: right digits / images
    load: LoadFigures
    server_cpu_s: float  # server process tree, over the run
    others_cpu_s: float  # the rest of the machine, neither server nor wrk: the noise
    server: ServerView | None  # from /metrics; None with several workers

    @property
    def scenario(self) -> str:
        return f"{self.payload} c={self.concurrency}"

    @property
    def ok_requests_per_s(self) -> float:
        return (self.load.requests - self.load.non_200) / self.load.duration_s

    @property
    def images_per_s(self) -> float:
        return self.ok_requests_per_s * self.images_per_request


@dataclass(frozen=True)
class RawRatios:
    requests_share: float | None  # single image: service req/s / raw batch-1 calls/s
    p50_factor: float | None  # single image: service p50 / raw batch-1 p50
    images_share: float | None  # batches: service images/s / raw images/s at batch 256


def ratios(result: ScenarioResult, raw: RawFigures) -> RawRatios:
    if result.images_per_request == 1:
        return RawRatios(
            result.ok_requests_per_s / raw.batch1.calls_per_s,
            result.load.p50_ms / raw.batch1.p50_ms,
            None,
        )
    return RawRatios(None, None, result.images_per_s / raw.images_per_s(REFERENCE_BATCH))


@dataclass(frozen=True)
class TargetVerdict:
    config: str
    target: str
    measured: str
    passed: bool | None  # None: the scenario was not run


def _find(
    results: list[ScenarioResult], config: str, payload: str, c: int
) -> ScenarioResult | None:
    return next(
        (r for r in results if (r.config, r.payload, r.concurrency) == (config, payload, c)), None
    )


def targets(results: list[ScenarioResult], raw: RawFigures, config: str) -> list[TargetVerdict]:
    """The issue's three targets for one configuration; a run with errors never passes."""
    verdicts: list[TargetVerdict] = []
    c32 = _find(results, config, "json", 32)
    verdicts.append(
        TargetVerdict(
            config,
            f"json c=32: >= {TARGET_C32_RPS:,.0f} req/s with p99 <= {TARGET_C32_P99_MS:g} ms",
            "not run"
            if c32 is None
            else f"{c32.ok_requests_per_s:,.0f} req/s, p99 {c32.load.p99_ms:.1f} ms, "
            f"{c32.load.errors} errors",
            None
            if c32 is None
            else c32.ok_requests_per_s >= TARGET_C32_RPS
            and c32.load.p99_ms <= TARGET_C32_P99_MS
            and c32.load.errors == 0,
        )
    )
    c1 = _find(results, config, "json", 1)
    verdicts.append(
        TargetVerdict(
            config,
            f"json c=1: p50 <= {TARGET_C1_P50_MS:g} ms",
            "not run" if c1 is None else f"p50 {c1.load.p50_ms:.3f} ms, {c1.load.errors} errors",
            None if c1 is None else c1.load.p50_ms <= TARGET_C1_P50_MS and c1.load.errors == 0,
        )
    )
    batches = [
        r
        for r in results
        if r.config == config and r.images_per_request == REFERENCE_BATCH and r.load.errors == 0
    ]
    best = max(batches, key=lambda r: r.images_per_s, default=None)
    limit = raw.images_per_s(REFERENCE_BATCH)
    verdicts.append(
        TargetVerdict(
            config,
            f"binary {REFERENCE_BATCH}-batches: >= {TARGET_BATCH_SHARE_OF_RAW:.0%} of raw "
            f"images/s ({TARGET_BATCH_SHARE_OF_RAW * limit:,.0f})",
            "not run (or only with errors)"
            if best is None
            else f"{best.images_per_s:,.0f} images/s at c={best.concurrency} "
            f"= {best.images_per_s / limit:.0%} of raw",
            None if best is None else best.images_per_s >= TARGET_BATCH_SHARE_OF_RAW * limit,
        )
    )
    return verdicts


def format_raw(raw: RawFigures) -> str:
    lines = [f"raw onnxruntime ({raw.provider}, in-process; * = the limit used for the ratios):"]
    best1 = raw.batch1
    for b1 in raw.batch1_by_threads:
        lines.append(
            f"{'*' if b1 is best1 else ' '} batch 1, {b1.intra_op_threads} thread(s): "
            f"p50 {b1.p50_ms:.3f} ms, p90 {b1.p90_ms:.3f} ms, p99 {b1.p99_ms:.3f} ms, "
            f"{b1.calls_per_s:,.0f} calls/s ({b1.runs:,} calls)"
        )
    for batch in raw.batch_sizes:
        best = raw.best_batch(batch)
        lines.extend(
            f"{'*' if t is best else ' '} batch {t.batch}, {t.intra_op_threads} thread(s): "
            f"{t.images_per_s:,.0f} images/s ({t.runs} calls in {t.seconds:.1f} s)"
            for t in raw.batches_by_threads
            if t.batch == batch
        )
    return "\n".join(lines)


_HEADER = (
    f"{'config':<12} {'scenario':<15} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p90 ms':>7} "
    f"{'p99 ms':>7} {'errors':>6}  {'vs raw onnxruntime':<24} {'batch':>5} {'srv CPU':>7} "
    f"{'others':>6}"
)


def format_row(result: ScenarioResult, raw: RawFigures) -> str:
    r = ratios(result, raw)
    if r.images_share is not None:
        versus = f"{r.images_share:.0%} of b{REFERENCE_BATCH} img/s"
    else:
        versus = f"{r.requests_share:.0%} of b1 calls/s, p50 x{r.p50_factor:.1f}"
    seconds = result.load.duration_s
    batch = f"{result.server.mean_batch:5.1f}" if result.server else "    -"
    return (
        f"{result.config:<12} {result.scenario:<15} {result.ok_requests_per_s:8,.0f} "
        f"{result.images_per_s:9,.0f} {result.load.p50_ms:7.2f} {result.load.p90_ms:7.2f} "
        f"{result.load.p99_ms:7.2f} {result.load.errors:6d}  {versus:<24} {batch} "
        f"{result.server_cpu_s / seconds:7.0%} {result.others_cpu_s / seconds:6.0%}"
        + (" noisy" if result.others_cpu_s / seconds > NOISY_CORES else "")
    )


def format_table(results: list[ScenarioResult], raw: RawFigures) -> str:
    lines = [_HEADER, "-" * len(_HEADER)]
    lines.extend(format_row(r, raw) for r in results)
    lines.append(
        "batch: mean images per onnxruntime call (server /metrics); srv CPU / others: CPU used by "
        "the server / by everything but server and wrk, in cores (100% = one core); noisy: others "
        f"over {NOISY_CORES:.0%}, the figures of that row are low"
    )
    return "\n".join(lines)


def format_targets(verdicts: list[TargetVerdict]) -> str:
    mark = {True: "PASS", False: "MISS", None: "----"}
    return "\n".join(f"  {mark[v.passed]}  [{v.config}] {v.target}: {v.measured}" for v in verdicts)


def spread(values: list[float], unit: str = ",.0f") -> str:
    """min / median / max of repeated runs, each formatted with ``unit``."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:{unit}} / {mid:{unit}} / {high:{unit}}"
