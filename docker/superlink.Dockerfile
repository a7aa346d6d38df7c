# Spry SuperLink: flower-superlink with this project installed.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f docker/superlink.Dockerfile -t spry-superlink:0.1.0 .
#
# Why not FROM flwr/superlink:1.42.0: the SuperLink runs the ServerApp in a subprocess
# (`--isolation subprocess`, Flower's default), and our ServerApp imports the task's
# model and data code (torch, transformers, ...). flwr/superlink ships only on Python
# 3.13 (Alpine by default, where torch has no wheels; Ubuntu 24.04 otherwise), while
# the project's version set is tested on 3.11 and maraboupy 2.0.0 stops at 3.12. So
# this image starts from flwr/base, the image flwr/superlink itself is built on, with
# Python 3.11 (tag assumed from Flower's `<version>-py<x.y>-ubuntu24.04` scheme, amd64
# and arm64), and installs the project exactly as docker/supernode.Dockerfile does.
#
# Flower would `uv sync` the app's dependencies for each run (its SuperLink default),
# which would pull PyPI's CUDA torch; here they are baked in, so that is turned off.
# The image also carries docker/register-supernodes.sh, which compose.yml runs once to
# register the SuperNodes' public keys (node authentication).
#
# Not built here (no Docker engine on the machine that wrote it): linted by hadolint
# and checked through `docker compose config` (tests/deploy/test_docker_files.py).
ARG FLWR_VERSION=1.42.0
ARG BASE_TAG=py3.11-ubuntu24.04
FROM flwr/base:${FLWR_VERSION}-${BASE_TAG}

ARG TARGETARCH
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV HF_HUB_OFFLINE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

WORKDIR /app
COPY --chown=app:app pyproject.toml constraints.txt requirements-offline.txt README.md ./
COPY --chown=app:app docker/deps.py /tmp/deps.py

# Same install as the SuperNode image (see there): CPU torch, then the pinned set
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
# /app/results: where the ServerApp writes (results-dir); compose mounts a volume there
RUN pip install --no-cache-dir --no-deps . \
    && mkdir -p /app/results

COPY --chmod=755 docker/register-supernodes.sh /usr/local/bin/register-supernodes

# Fleet, Control and Runtime APIs, all HTTPS on one port in flwr 1.42
EXPOSE 8000
ENTRYPOINT ["flower-superlink"]
