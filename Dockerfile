# syntax=docker/dockerfile:1.7
#
# Sfumato images, one file, three targets:
#
#   docker build --target api        -t sfumato-api .         # slim Python, no torch, non-root, HEALTHCHECK
#   docker build --target worker     -t sfumato-worker .      # CUDA base + torch (cu128) + xformers, non-root
#   docker build --target worker-cpu -t sfumato-worker-cpu .  # slim Python + CPU torch: laptops, CI, compose default
#
# Reproducible installs: every Python package is pinned by requirements/lock.txt (pip constraints,
# exact versions, the set the tests ran against). torch is never resolved from a range (a range
# pulls a multi-GB CUDA build): it is installed first, as exactly TORCH_VERSION from the PyTorch
# index of its build (CPU or CUDA), and the lock's `torch==` pin is then already satisfied.
# Dependencies are installed before the source is copied, so a code change rebuilds one small
# layer. The source is owned by root and read-only to the service user (uid 10001).
# Linted by hadolint in `make test` (tests/deploy/test_dockerfile.py) with no rule switched off:
# any exception belongs inline, as `# hadolint ignore=DLxxxx` followed by the reason.
# Each image is started without Docker in `make test` (tests/deploy/test_image_contents.py): the
# files a stage COPYs, over exactly its requirements, must import its `python -m` entry point.
# The images ship the `sfumato-server` packages only (core/ + api/, or core/ + worker/); training/,
# devstack/ and the client SDK (client/) stay out of every image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# The CUDA "base" flavour (CUDA runtime core + the NVIDIA container contract) and not "runtime":
# torch's CUDA wheels bring their own cuBLAS/cuDNN/NCCL as pip packages, so the runtime
# flavour's copies would be ~3 GB of dead weight. Any nvidia/cuda 12.8+ tag works here.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA=cu128
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
# xformers kernels are built per torch release; when they do not match, the worker logs it and
# keeps PyTorch SDPA (SFUMATO_ATTENTION=auto), so a mismatch costs speed, never correctness.
ARG XFORMERS_VERSION=0.0.35
# dumb-init is PID 1: it forwards the kubelet's single SIGTERM to the service exactly once and
# reaps zombies. Python as PID 1 would ignore SIGTERM until RQ installs its handler (during a
# model load) and the pod would sit out its whole grace period.
ARG DUMB_INIT_VERSION=1.2.5.post1
# The compiled fast path (SFUMATO_COMPILE, docs/operations/compilation.md) needs a C/C++ compiler
# at run time: inductor builds its CPU wrappers with g++ and triton (shipped with the CUDA torch
# wheel) builds its GPU launcher with gcc. Ubuntu 24.04's build-essential meta package; change it
# with CUDA_IMAGE's Ubuntu release.
ARG BUILD_ESSENTIAL_VERSION=12.10ubuntu1

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
# Debian slim base shared by `api` and `worker-cpu`.
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 sfumato \
 && useradd --system --uid 10001 --gid sfumato --home-dir /home/sfumato --create-home --shell /usr/sbin/nologin sfumato \
 && install -d -o 10001 -g 10001 /var/lib/sfumato
WORKDIR /app

# Dependency list of the extras, from pyproject.toml (standard library only, no project build):
# sfumato-server's base dependencies (the torch-free core) plus the role's extra.
FROM python-base AS deps-source
WORKDIR /build
COPY pyproject.toml ./
COPY requirements/lock.txt requirements/lock.txt
COPY deploy/docker/requirements.py ./
RUN python requirements.py --pyproject pyproject.toml api >api.txt \
 && python requirements.py --pyproject pyproject.toml worker >worker.txt \
 && python requirements.py --pyproject pyproject.toml worker cuda >worker-cuda.txt

# ---------------------------------------------------------------------------------------------
# api: FastAPI + uvicorn, no torch.
FROM python-base AS api-build
ARG DUMB_INIT_VERSION
COPY --from=deps-source /build /build
RUN python -m venv /opt/venv \
 && pip install -c /build/requirements/lock.txt -r /build/api.txt "dumb-init==${DUMB_INIT_VERSION}" \
 && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the API image" >&2; exit 1; fi

FROM python-base AS api
COPY --from=api-build /opt/venv /opt/venv
COPY core core
COPY api api
RUN python -m compileall -q /app
ENV SFUMATO_API_HOST=0.0.0.0 \
    SFUMATO_API_PORT=8000 \
    SFUMATO_DATA_DIR=/var/lib/sfumato
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SFUMATO_API_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["dumb-init", "--single-child", "--"]
CMD ["python", "-m", "api"]

# ---------------------------------------------------------------------------------------------
# worker-cpu: CPU torch from the PyTorch CPU index (no CUDA libraries at all).
FROM python-base AS worker-cpu-build
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ARG DUMB_INIT_VERSION
COPY --from=deps-source /build /build
RUN python -m venv /opt/venv \
 && pip install --no-deps --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}+cpu" \
 && pip install -c /build/requirements/lock.txt -r /build/worker.txt "dumb-init==${DUMB_INIT_VERSION}"

FROM python-base AS worker-cpu
COPY --from=worker-cpu-build /opt/venv /opt/venv
COPY core core
COPY worker worker
RUN python -m compileall -q /app
ENV SFUMATO_DEVICE=cpu \
    SFUMATO_DATA_DIR=/var/lib/sfumato \
    SFUMATO_WORKER_METRICS_HOST=0.0.0.0 \
    SFUMATO_WORKER_METRICS_PORT=9450 \
    HF_HOME=/var/lib/sfumato/huggingface \
    XDG_CACHE_HOME=/var/lib/sfumato/cache
USER 10001:10001
EXPOSE 9450
# /healthz is 200 once the model is loaded and warmed up (503 while starting or draining).
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SFUMATO_WORKER_METRICS_PORT', '9450'), timeout=2)"]
ENTRYPOINT ["dumb-init", "--single-child", "--"]
CMD ["python", "-m", "worker"]

# ---------------------------------------------------------------------------------------------
# worker: CUDA. Ubuntu's Python is 3.12 and the lock is made on 3.11, so the interpreter is the
# python-build-standalone 3.11 that the pinned uv installs (self-contained, any glibc >= 2.17).
FROM ${CUDA_IMAGE} AS cuda-python
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN uv python install 3.11 \
 && "$(uv python find 3.11)" -m venv /opt/venv

FROM cuda-python AS worker-build
ARG TORCH_VERSION
ARG TORCH_CUDA
ARG TORCH_CUDA_INDEX
ARG XFORMERS_VERSION
ARG DUMB_INIT_VERSION
COPY --from=deps-source /build /build
# torch with its exactly pinned CUDA libraries (nvidia-*, triton) from the PyTorch index; then
# everything else from PyPI under the lock (torch==TORCH_VERSION is already satisfied).
RUN pip install --index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}+${TORCH_CUDA}" \
 && pip install -c /build/requirements/lock.txt -r /build/worker-cuda.txt \
        "xformers==${XFORMERS_VERSION}" "dumb-init==${DUMB_INIT_VERSION}"

FROM ${CUDA_IMAGE} AS worker
ARG BUILD_ESSENTIAL_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends "build-essential=${BUILD_ESSENTIAL_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 sfumato \
 && useradd --system --uid 10001 --gid sfumato --home-dir /home/sfumato --create-home --shell /usr/sbin/nologin sfumato \
 && install -d -o 10001 -g 10001 /var/lib/sfumato
COPY --from=worker-build /opt/python /opt/python
COPY --from=worker-build /opt/venv /opt/venv
WORKDIR /app
COPY core core
COPY worker worker
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SFUMATO_DEVICE=cuda \
    SFUMATO_DATA_DIR=/var/lib/sfumato \
    SFUMATO_WORKER_METRICS_HOST=0.0.0.0 \
    SFUMATO_WORKER_METRICS_PORT=9450 \
    HF_HOME=/var/lib/sfumato/huggingface \
    XDG_CACHE_HOME=/var/lib/sfumato/cache \
    SFUMATO_COMPILE_CACHE_DIR=/var/lib/sfumato/compile-cache
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 9450
# start-period covers a first start that compiles every batch bucket (minutes); a restart with
# the compile cache on the data volume is ready in seconds.
HEALTHCHECK --interval=15s --timeout=3s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SFUMATO_WORKER_METRICS_PORT', '9450'), timeout=2)"]
ENTRYPOINT ["dumb-init", "--single-child", "--"]
CMD ["python", "-m", "worker"]
