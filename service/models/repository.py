"""The versions this worker serves: scanned from the repository, loaded, tested, swapped.

Like KServe's ``ModelRepository`` and Triton's model management:

- a poll (and model control) reconciles what is published with the version policy;
- a new version is loaded, checked against the contract, warmed up and self-tested off
  the event loop, and only then swapped in, in one assignment: a request sees either the
  old set of versions or the new one;
- a version that fails stays out, with its reason, and never replaces a working one; the
  service never goes from some ready versions to none except by an explicit unload;
- a version that is swapped out finishes the requests it has, then is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from model_contract import MODEL_NAME, published_versions
from service.batcher import Batcher
from service.errors import RETRY_AFTER_S, InputError
from service.metrics import Metrics
from service.models.policy import VersionPolicy
from service.models.served import ServedVersion
from service.models.session import Device, ModelLoadError, ModelSession, SessionTuning
from service.models.worker_state import Control, VersionReport, WorkerState
from service.native_memory import release_native_memory

logger = logging.getLogger(__name__)


class State(StrEnum):
    """Triton's model states, as the repository index reports them."""

    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class LoadSettings:
    device: Device
    tuning: SessionTuning
    batch_max_size: int
    batch_max_delay_s: float
    batch_queue_images: int
    batch_queue_bulk_images: int | None = None  # None: as many as batch_queue_images
    interactive_max_images: int = 8
    batch_inline_images: int = 0  # on the CPU only


@dataclass(frozen=True)
class _Failure:
    reason: str
    # The file as it was when it failed: a version is retried only if its file changed.
    signature: tuple[int, int] | None


class VersionNotReadyError(InputError):
    def __init__(self, version: int | None, ready: list[int]):
        if version is None:
            super().__init__(
                f"model {MODEL_NAME!r} has no ready version yet: see POST /v2/repository/index "
                "for each version's state, and retry shortly",
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        else:
            super().__init__(
                f"model {MODEL_NAME!r} has no ready version {version}: ready versions are "
                f"{ready}, or leave the version out for the newest",
                status=404,
            )


class LoadFailedError(InputError):
    def __init__(self, message: str):
        super().__init__(message, status=400)


def scanner(repository: Path | None, model_file: Path) -> Callable[[], dict[int, Path]]:
    """What is published: a repository's versions, or one model file as version 1."""
    if repository is None:
        return lambda: {1: model_file}
    return lambda: published_versions(repository)


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class ModelRepository:
    """The versions of the one model this server serves, and their lifecycle."""

    def __init__(
        self,
        scan: Callable[[], dict[int, Path]],
        policy: VersionPolicy,
        load_settings: LoadSettings,
        metrics: Metrics,
        worker_state: WorkerState,
        poll_s: float = 0.0,
        request_alone: Callable[[], bool] = lambda: False,
    ):
        """``request_alone``: whether the request asking is the only one in progress (see
        ``service.requests_in_progress``), for the batchers."""
        self._scan = scan
        self._request_alone = request_alone
        self._configured_policy = policy
        self._load_settings = load_settings
        self._metrics = metrics
        self._worker_state = worker_state
        self._poll_s = poll_s
        # Replaced whole, never changed in place: readers need no lock.
        self._served: dict[int, ServedVersion] = {}
        self._loading: set[int] = set()
        self._failures: dict[int, _Failure] = {}
        self._published: dict[int, Path] = {}
        self._control = Control()
        self._retired: set[ServedVersion] = set()
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    # --- serving ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._served)

    def ready_versions(self) -> list[int]:
        return sorted(self._served)

    def resolve(self, version: int | None = None) -> ServedVersion:
        """The version a request runs on: the one asked for, or the highest ready one."""
        served = self._served
        if version is None:
            if not served:
                raise VersionNotReadyError(None, [])
            return served[max(served)]
        if version not in served:
            raise VersionNotReadyError(version, sorted(served))
        return served[version]

    @property
    def policy(self) -> VersionPolicy:
        if self._control.policy is not None:
            return VersionPolicy.parse(self._control.policy)
        return self._configured_policy

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load what the policy selects, then keep polling (when polling is on)."""
        self._control = self._worker_state.read_control()
        await self.reconcile()
        if self._poll_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        served, self._served = self._served, {}
        for version in served.values():
            self._retire(version)
        await asyncio.gather(*(v.released() for v in list(self._retired)))
        self._worker_state.forget()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                async with self._lock:
                    # Read under the lock: a load or unload on this worker writes it there.
                    control = self._worker_state.read_control()
                    if control != self._control:
                        logger.info("adopting model control from another worker: %s", control)
                        self._control = control
                    await self._reconcile()
            except Exception:  # one bad poll must not end polling
                logger.exception("repository poll failed")

    async def load(self, policy: VersionPolicy | None) -> list[int]:
        """Model control: serve what ``policy`` (or the configured one) selects; the ready
        versions. Refused, and nothing changed, if no version it selects can be served."""
        async with self._lock:
            previous = self._control
            self._control = Control(
                policy=None if policy is None else str(policy),
                generation=previous.generation + 1,
            )
            await self._reconcile()
            selected = set(self.policy.select(self._published))
            if not selected & set(self._served):
                reasons = [f"version {v}: {f.reason}" for v, f in sorted(self._failures.items())]
                if policy is not None and policy.kind == "specific":
                    reasons += [
                        f"version {v} is not published"
                        for v in policy.versions
                        if v not in self._published
                    ]
                self._control = previous
                await self._reconcile()
                raise LoadFailedError(
                    f"model {MODEL_NAME!r} with version policy {policy or self.policy} has no "
                    f"version that can be served ({'; '.join(reasons) or 'none published'}); "
                    "what was served before still is"
                )
            self._worker_state.write_control(self._control)
            return self.ready_versions()

    async def unload(self) -> None:
        """Model control: serve no version until the next load."""
        async with self._lock:
            self._control = Control(unloaded=True, generation=self._control.generation + 1)
            self._worker_state.write_control(self._control)
            await self._reconcile()

    async def reconcile(self) -> None:
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        self._published = self._scan()
        for version, failure in list(self._failures.items()):
            path = self._published.get(version)
            if path is None or _signature(path) != failure.signature:
                del self._failures[version]  # gone, or a new file: worth another try
        if self._control.unloaded:
            self._swap({})
            return
        policy = self.policy
        served = dict(self._served)
        while True:
            loadable = [v for v in self._published if v not in self._failures]
            wanted = policy.select(loadable)
            missing = [v for v in wanted if v not in served]
            if not missing:
                break
            for version in missing:
                loaded = await self._load(version, self._published[version])
                if loaded is not None:
                    served[version] = loaded
        selection = {v: served[v] for v in wanted}
        for version, extra in served.items():
            if version not in selection and version not in self._served:
                self._retire(extra)  # loaded in this round, then outranked by another
        if selection or not self._served:
            self._swap(selection)
        self._publish_state()

    def _swap(self, selection: dict[int, ServedVersion]) -> None:
        before, self._served = self._served, selection
        for version, served in selection.items():
            if version not in before:
                logger.info("serving version %s (%s)", version, served.model_id)
        for version, old in before.items():
            if version not in selection:
                logger.info(
                    "unloading version %s once its %d requests finish", version, old.in_flight
                )
                self._retire(old)
        self._publish_state()

    def _retire(self, version: ServedVersion) -> None:
        self._metrics.model.labels(version.name, version.model_id, version.provider).set(0)
        version.retire()
        self._retired.add(version)
        task = asyncio.ensure_future(version.released())
        task.add_done_callback(lambda _: self._forget(version))

    def _forget(self, version: ServedVersion) -> None:
        self._retired.discard(version)
        # On the next turn of the loop, once the last references to the version are gone.
        asyncio.get_running_loop().call_soon(release_native_memory)

    async def _load(self, version: int, path: Path) -> ServedVersion | None:
        self._loading.add(version)
        self._publish_state()
        started = time.perf_counter()
        try:
            session = await asyncio.to_thread(self._open, path)
        except Exception as exc:
            if isinstance(exc, ModelLoadError):
                reason = exc.reason
            else:  # onnxruntime's own errors, e.g. while running the self-test
                reason = f"{type(exc).__name__}: {exc}"
            self._failures[version] = _Failure(reason, _signature(path))
            self._metrics.loads.labels(str(version), "refused").inc()
            logger.error(
                "version %s refused (still serving %s): %s",
                version,
                self.ready_versions() or "nothing",
                reason,
            )
            return None
        finally:
            self._loading.discard(version)
        settings = self._load_settings
        batcher = Batcher(
            session,
            self._metrics.of_version(version),
            max_batch_size=settings.batch_max_size,
            max_delay_s=settings.batch_max_delay_s,
            max_queued_images=settings.batch_queue_images,
            interactive_max_images=settings.interactive_max_images,
            max_queued_bulk_images=settings.batch_queue_bulk_images,
            inline_max_images=settings.batch_inline_images if session.on_cpu else 0,
            alone=self._request_alone,
        )
        batcher.start()
        self._metrics.loads.labels(str(version), "loaded").inc()
        self._metrics.model.labels(str(version), session.model_id, session.providers[0]).set(1)
        logger.info(
            "version %s loaded from %s on %s, warmed up and self-tested in %.0f ms",
            version,
            path,
            session.providers[0],
            (time.perf_counter() - started) * 1000,
        )
        return ServedVersion(version, session, batcher)

    def _open(self, path: Path) -> ModelSession:
        """Blocking: runs in a thread so that serving goes on meanwhile."""
        settings = self._load_settings
        session = ModelSession(path, settings.device, settings.tuning)
        session.warm_up()
        session.self_test()
        return session

    # --- the index ----------------------------------------------------------------------

    def states(self) -> dict[int, VersionReport]:
        """This worker's state of every version it knows of."""
        reports: dict[int, VersionReport] = {}
        policy = self.policy
        for version in sorted({*self._published, *self._served, *self._failures}):
            if version in self._served:
                reports[version] = VersionReport(State.READY)
            elif version in self._loading:
                reports[version] = VersionReport(State.LOADING)
            elif version in self._failures:
                reports[version] = VersionReport(State.UNAVAILABLE, self._failures[version].reason)
            elif self._control.unloaded:
                reports[version] = VersionReport(State.UNAVAILABLE, "unloaded by model control")
            else:
                reports[version] = VersionReport(
                    State.UNAVAILABLE, f"not selected by version policy {policy}"
                )
        return reports

    def _publish_state(self) -> None:
        self._worker_state.publish(self.states())

    def index(self) -> list[IndexEntry]:
        """Every version with its state here, and how the other workers disagree if they do."""
        mine = self.states()
        others = self._worker_state.all_workers()
        others.pop(self._worker_state.pid, None)
        entries = []
        for version in sorted({*mine, *(v for views in others.values() for v in views)}):
            own = mine.get(version, VersionReport(State.UNAVAILABLE, "not known to this worker"))
            views = {self._worker_state.pid: own} | {
                pid: view.get(version, VersionReport(State.UNAVAILABLE, "not known"))
                for pid, view in others.items()
            }
            reason = own.reason
            states = {view.state for view in views.values()}
            if len(states) > 1:
                counts = ", ".join(
                    f"{sum(v.state == s for v in views.values())} {s}" for s in sorted(states)
                )
                reason = f"workers disagree ({counts} of {len(views)})" + (
                    f"; this one: {own.reason}" if own.reason else ""
                )
            entries.append(
                IndexEntry(
                    version=version,
                    state=own.state,
                    reason=reason,
                    workers={pid: view.state for pid, view in views.items()} if others else None,
                )
            )
        return entries


@dataclass(frozen=True)
class IndexEntry:
    version: int
    state: str
    reason: str
    workers: dict[int, str] | None
