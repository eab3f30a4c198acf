# Image for deployments/kuberay-rayservice.yaml: Ray 2.60 with CUDA, the CUDA torch build
# and this project. The same image runs the CPU head (replicas fall back to CPU there,
# but the config never schedules one on it).
FROM rayproject/ray:2.60.0-py311-gpu
RUN pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cu128
COPY --chown=ray:users . /home/ray/rerank-serve
RUN pip install --no-cache-dir -e /home/ray/rerank-serve
# Published checkpoints baked in: replicas start without reaching the hub.
RUN python -c "from huggingface_hub import snapshot_download; \
    [snapshot_download('cross-encoder/ms-marco-' + m) for m in \
    ('TinyBERT-L2-v2', 'MiniLM-L2-v2', 'MiniLM-L4-v2', 'MiniLM-L6-v2', 'MiniLM-L12-v2')]"
