# Three images from one file, all on python:3.11-slim:
#
#   docker build --target service     -t mnist-serving:service .      # CPU API, no TensorFlow
#   docker build --target service-gpu -t mnist-serving:service-gpu .  # CUDA API (onnxruntime-gpu)
#   docker build --target train       -t mnist-serving:train .        # one-shot trainer
#
# Each image installs exactly one extra of pyproject.toml from uv.lock, so the service never
# carries TensorFlow and onnxruntime never meets onnxruntime-gpu. The locked dependencies go
# into /opt/venv from pyproject.toml and uv.lock alone; the project itself arrives as a
# wheel in a last small layer, so a code change neither reinstalls nor re-ships them.
# `service` is the last stage, hence what a plain `docker build .` produces.

ARG PYTHON_IMAGE=python:3.11-slim


# --- build stages ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS uv
ARG UV_VERSION=0.13.9
# pip rather than the ghcr.io/astral-sh/uv image: one registry fewer to reach.
RUN python -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
# UV_PYTHON_DOWNLOADS=never: the venv must use the base image's interpreter, which the
# runtime stages share, so the venv stays valid once copied there.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock ./

# The project, built once for all three images.
FROM uv AS wheel
COPY README.md ./
COPY model_contract ./model_contract
COPY service ./service
COPY training ./training
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --out-dir /dist

FROM uv AS service-deps
# Unpinned: Debian drops superseded versions from its mirrors, so a pin would break the
# build; binutils only strips files here and never reaches the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
# Then the venv loses what the API never runs, about 40 MB of the 325 MB budget: test
# suites, onnxruntime's offline tooling (quantizer, transformer optimizer, converters) and
# the debug symbols of extension modules (uvloop alone carries 12 MB).
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --extra service \
    && site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && find "$site" -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf "$site/onnxruntime/transformers" "$site/onnxruntime/quantization" \
        "$site/onnxruntime/tools" \
    && find "$site" -name '*.cpython-*.so' -exec strip --strip-unneeded {} +

FROM uv AS gpu-deps
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --extra gpu

FROM uv AS train-deps
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --extra train


# --- runtime stages --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/mnist
# /models, the model repository, belongs to the unprivileged user because Docker copies a
# mount point's ownership into an empty named volume: the trainer, running as that user,
# can then publish versions into a fresh `models` volume.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/mnist \
        --shell /usr/sbin/nologin mnist \
    && mkdir -p /models \
    && chown mnist:mnist /models
WORKDIR /home/mnist

# What both API images share; they differ only in their venv and device.
FROM runtime AS api
ENV MNIST_HOST=0.0.0.0 \
    MNIST_PORT=8000 \
    MNIST_MODEL_REPOSITORY=/models
EXPOSE 8000
# urllib rather than curl: the slim base has no curl and the image needs none. MNIST_PORT is
# read at check time, so a container that moves the port keeps a working healthcheck.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('MNIST_PORT', '8000'), timeout=4)"]
CMD ["mnist-serve"]

# In each image below, the project wheel goes into the venv with uv borrowed from the build
# stage through a bind mount, so neither uv nor the wheel file stays in the image.
FROM runtime AS train
COPY --from=train-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=uv,source=/usr/local/bin/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=wheel,source=/dist,target=/dist \
    uv pip install --python /opt/venv/bin/python --no-deps --no-index --no-cache \
        --compile-bytecode /dist/*.whl
ENV MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=2
USER 10001:10001
# By default it publishes the next version into the repository at /models; arguments given
# to `docker run` (or a pod's args) replace these, e.g. --repository /models --epochs 12.
ENTRYPOINT ["mnist-train"]
CMD ["--repository", "/models"]

FROM api AS service-gpu
COPY --from=gpu-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=uv,source=/usr/local/bin/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=wheel,source=/dist,target=/dist \
    uv pip install --python /opt/venv/bin/python --no-deps --no-index --no-cache \
        --compile-bytecode /dist/*.whl
# The CUDA and cuDNN libraries come as nvidia-* wheels inside the venv rather than from a
# CUDA base image; the dynamic loader must be told where they are.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MNIST_DEVICE=cuda
USER 10001:10001

FROM api AS service
COPY --from=service-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=uv,source=/usr/local/bin/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=wheel,source=/dist,target=/dist \
    uv pip install --python /opt/venv/bin/python --no-deps --no-index --no-cache \
        --compile-bytecode /dist/*.whl
ENV MNIST_DEVICE=cpu
USER 10001:10001
