"""`mnist-serve` / `python -m service`: run the API under uvicorn with the MNIST_* settings."""

import uvicorn

from service.settings import Settings


def main() -> None:
    settings = Settings()
    # uvicorn needs an import string to start several workers; each builds its own app.
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
    )


if __name__ == "__main__":
    main()
