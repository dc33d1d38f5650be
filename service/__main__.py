"""`mnist-serve` / `python -m service`: run the API under uvicorn with the MNIST_* settings."""

import os
import sys
import tempfile
from pathlib import Path

import uvicorn

from service.models.session import ModelLoadError, ModelSession
from service.settings import Settings


def main() -> None:
    settings = Settings()
    workers = settings.worker_processes()
    # Check before uvicorn: a bad setup then stops start-up with one line and exit 1, rather
    # than a lifespan traceback, or exit 0 from uvicorn's supervisor of several workers.
    problem = _startup_problem(settings)
    if problem:
        print(f"ERROR:    {problem}", file=sys.stderr)
        raise SystemExit(1)
    with tempfile.TemporaryDirectory(prefix="mnist-serve-") as shared:
        if workers > 1:
            # Each worker counts in files here, so /metrics adds up all of them whichever
            # worker answers. Set before the workers start: prometheus-client reads it once.
            metrics_dir = Path(shared, "metrics")
            metrics_dir.mkdir()
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
            # And they share model-control state and their views of the versions here.
            os.environ.setdefault("MNIST_WORKER_STATE_DIR", str(Path(shared, "models")))
        # uvicorn needs an import string to start several workers; each builds its own app.
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level=settings.log_level,
            access_log=False,
        )


def _startup_problem(settings: Settings) -> str | None:
    if settings.model_repository is not None:
        # An empty repository is fine (the server waits, not ready, for a first version);
        # a missing one is a wrong setting.
        if not settings.model_repository.is_dir():
            return f"MNIST_MODEL_REPOSITORY={settings.model_repository} is not a directory"
        return None
    # One file: it is all there is to serve, so it must load. Each worker still loads its own.
    try:
        ModelSession(settings.model_path, settings.device).self_test()
    except ModelLoadError as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    main()
