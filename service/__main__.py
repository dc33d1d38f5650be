"""`mnist-serve` / `python -m service`: run the API under uvicorn with the MNIST_* settings."""

import os
import sys
import tempfile

import uvicorn

from service.model_session import ModelLoadError, ModelSession
from service.settings import Settings


def main() -> None:
    settings = Settings()
    workers = settings.worker_processes()
    # Load the model once before uvicorn: a bad file or device then stops start-up with one
    # line and exit 1, rather than a lifespan traceback, or exit 0 from uvicorn's supervisor
    # of several workers. Each worker still loads its own in the lifespan.
    try:
        ModelSession(settings.model_path, settings.device)
    except ModelLoadError as exc:
        print(f"ERROR:    {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    with tempfile.TemporaryDirectory(prefix="mnist-metrics-") as metrics_dir:
        if workers > 1:
            # Each worker counts in files here, so /metrics adds up all of them whichever
            # worker answers. Set before the workers start: prometheus-client reads it once.
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
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


if __name__ == "__main__":
    main()
