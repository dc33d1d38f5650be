"""`mnist-serve` / `python -m service`: run the API under uvicorn with the MNIST_* settings."""

import os
import tempfile

import uvicorn

from service.settings import Settings


def main() -> None:
    settings = Settings()
    workers = settings.worker_processes()
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
