# Spry SuperNode for NVIDIA Jetson (Orin, JetPack 6): the CUDA variant of
# docker/supernode.Dockerfile. Build on the Jetson itself (or an arm64 builder):
#
#   docker build -f docker/supernode-jetson.Dockerfile -t spry-supernode-jetson:0.1.0 .
#
# Assumed base: dustynv/pytorch:2.7-r36.4.0-cu128-24.04 from jetson-containers, i.e.
# L4T r36.4 (JetPack 6.1/6.2), Ubuntu 24.04, Python 3.12, CUDA 12.8, torch 2.7 built for
# the Orin GPU. Not NVIDIA's older l4t-pytorch images: JetPack 6's Python is 3.10, and
# flwr 1.42.0 (like numpy 2.4, transformers 5, onnxruntime 1.32 in our pins) needs
# Python >= 3.11.
#
# torch: the project pins torch==2.13.0, which has no Jetson (CUDA aarch64 L4T) build,
# so this image keeps the base image's torch and installs everything else from the
# pinned set without it (docker/deps.py --drop torch). A constraint on the installed
# torch version makes pip fail rather than replace it with a CPU wheel from PyPI.
# maraboupy 2.0.0 and z3-solver 5.4.1.0 publish no arm64 wheels, so the VeriX task
# cannot run here. The GPU is used when the run sets `client-num-gpus` above 0.
#
# UNTESTED: written without a Jetson and without a Docker engine; only linted by
# hadolint (tests/deploy/test_docker_files.py). Whether our code runs on torch 2.7
# and this base's numpy is not checked.
ARG JETSON_BASE=dustynv/pytorch:2.7-r36.4.0-cu128-24.04
FROM ${JETSON_BASE}

# jetson-containers images point pip at their own wheel index; the pinned set is PyPI's.
# The base's Python is the system one (PEP 668), hence break-system-packages.
ENV HF_HUB_OFFLINE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=https://pypi.org/simple \
    PIP_BREAK_SYSTEM_PACKAGES=1

# The same non-root user as Flower's images (uid 49999), so one `chown` of the certs
# directory serves every image; `video` grants access to the Jetson GPU devices
RUN groupadd --gid 49999 app \
    && useradd --uid 49999 --gid app --groups video --home-dir /app --create-home app

WORKDIR /app
COPY --chown=app:app pyproject.toml constraints.txt requirements-offline.txt README.md ./
COPY --chown=app:app docker/deps.py /tmp/deps.py

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/keep-torch.txt \
    && python3 /tmp/deps.py --no-extras --drop torch --drop maraboupy --drop z3-solver \
       > /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir -c /tmp/keep-torch.txt -r /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir --no-deps -r requirements-offline.txt \
    && rm /tmp/deps.py /tmp/requirements.txt /tmp/keep-torch.txt

COPY --chown=app:app spry ./spry
COPY --chown=app:app strategies ./strategies
COPY --chown=app:app server ./server
COPY --chown=app:app clients ./clients
COPY --chown=app:app cli ./cli
RUN python3 -m pip install --no-cache-dir --no-deps .

USER 49999:49999
ENV HOME=/app
ENTRYPOINT ["flower-supernode"]
