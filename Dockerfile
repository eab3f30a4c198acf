# Image for deployments/kuberay-rayservice.yaml: Ray 2.60 with CUDA, the CUDA torch build
# and this project. GPU replicas (num_gpus > 0) need CUDA and fail at start without it
# (unless a model sets allow_cpu_fallback), so the image must carry the CUDA torch build,
# not the CPU one the build machines use. The same image runs the CPU head, which only
# runs the ingress (no model replica is ever scheduled there).
#
# Base image pinned by digest so that a rebuild gets the same Ray, CUDA and OS layers.
# PLACEHOLDER, NOT YET PINNED: the digest could not be looked up where this file was
# written (no registry access). Pin it before the first production build:
#   docker buildx imagetools inspect rayproject/ray:2.60.0-py311-gpu --format '{{json .Manifest.Digest}}'
# then build with --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu@sha256:<that digest>
# and write the same value into the default below.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}
# The torch the project is tested with, built for CUDA 12.8.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# .dockerignore keeps .venv, .git and measured results out of this copy.
COPY --chown=ray:users . /home/ray/rerank-serve
RUN pip install --no-cache-dir -e /home/ray/rerank-serve
# Published checkpoints baked in: replicas start without reaching the hub.
RUN python -c "from huggingface_hub import snapshot_download; \
    [snapshot_download('cross-encoder/ms-marco-' + m) for m in \
    ('TinyBERT-L2-v2', 'MiniLM-L2-v2', 'MiniLM-L4-v2', 'MiniLM-L6-v2', 'MiniLM-L12-v2')]"
