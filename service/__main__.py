"""`mnist-serve` / `python -m service`: run the API under uvicorn with the MNIST_* settings."""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client import multiprocess

from service.accepting import AcceptingServer
from service.auth import KeyFileError, KeyRing
from service.http_protocol import uvicorn_limits
from service.logs import log_config, skip_unused_record_fields
from service.models.session import ModelLoadError, ModelSession
from service.settings import Settings
from service.supervisor import Supervisor, listening_sockets


def _exit_cleanly(number: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal it shut down for once it has restored the handler it
    # found; this one makes that, and a SIGTERM before uvicorn starts, an exit with 0.
    raise SystemExit(0)


def main() -> None:
    settings = Settings()
    workers = settings.worker_processes()
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with tempfile.TemporaryDirectory(prefix="mnist-serve-") as shared:
        # Check before uvicorn: a bad setup then stops start-up with one line and exit 1,
        # rather than a lifespan traceback, or exit 0 from uvicorn's supervisor of workers.
        # The file checked is the one named in the settings, so the message names it too.
        problem = _startup_problem(settings)
        if problem:
            print(f"ERROR:    {problem}", file=sys.stderr)
            raise SystemExit(1)
        if workers > 1 and settings.model_repository is None:
            settings = _pin_model_file(settings, Path(shared))
        if workers > 1:
            # Each worker counts in files here, so /metrics adds up all of them whichever
            # worker answers. Set before the workers start: prometheus-client reads it once.
            metrics_dir = Path(shared, "metrics")
            metrics_dir.mkdir()
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
            # And they share model-control state and their views of the versions here.
            os.environ.setdefault("MNIST_WORKER_STATE_DIR", str(Path(shared, "models")))
        # An import string: each worker process builds its own app.
        config = uvicorn.Config(
            "service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=log_config(settings.log_format, settings.log_level),
            # The service writes one access line per request itself.
            access_log=False,
            # No "server: uvicorn": versions are nobody's business.
            server_header=False,
            **uvicorn_limits(settings),
        )
        try:
            sockets = listening_sockets(
                settings.host, settings.port, workers, settings.listen_backlog
            )
        except OSError as exc:
            print(
                f"ERROR:    cannot listen on {settings.host}:{settings.port}: {exc}",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        if workers == 1:
            # On a socket of ours, like each worker of several: AcceptingServer accepts
            # every waiting connection at each wake-up, where uvloop's server takes one.
            server = AcceptingServer(config, announce=True)
            skip_unused_record_fields()  # as each worker of several does
            server.run(sockets=sockets)
            if not server.started:
                raise SystemExit(uvicorn.config.STARTUP_FAILURE)
            return
        supervisor = Supervisor(
            config,
            sockets,
            stop_timeout_s=settings.drain_delay_s + settings.drain_timeout_s,
            on_worker_exit=_forget_metrics,
        )
        raise SystemExit(supervisor.run())


def _forget_metrics(pid: int) -> None:
    """A dead worker's live gauges (queued images, loaded models) must not count on."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _pin_model_file(settings: Settings, shared: Path) -> Settings:
    """Serve a private copy of the one model file, so that every worker serves the same one.

    uvicorn restarts a worker that dies, and the new one loads the file as it is then: if
    someone replaced it meanwhile, workers would answer with different models (or, with a
    bad file, the new worker would fail). A versioned repository is the way to change
    models while serving; a plain file is frozen at start-up.
    """
    pinned = Path(shared, "model", settings.model_path.name)
    pinned.parent.mkdir()
    shutil.copyfile(settings.model_path, pinned)
    os.environ["MNIST_MODEL_PATH"] = str(pinned)
    print(f"INFO:     serving {settings.model_path} as copied at start-up", file=sys.stderr)
    return settings.model_copy(update={"model_path": pinned})


def _startup_problem(settings: Settings) -> str | None:
    try:
        KeyRing.from_settings(settings)
    except KeyFileError as exc:
        return str(exc)
    if settings.model_repository is not None:
        # An empty repository is fine (the server waits, not ready, for a first version);
        # a missing one is a wrong setting.
        if not settings.model_repository.is_dir():
            return f"MNIST_MODEL_REPOSITORY={settings.model_repository} is not a directory"
        return None
    # One file: it is all there is to serve, so it must load. Each worker still loads its own.
    try:
        ModelSession(settings.model_path, settings.device, settings.session_tuning()).self_test()
    except ModelLoadError as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    main()
