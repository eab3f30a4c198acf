"""The cross-encoder itself: checkpoints (hub id, local directory, or a labelled random
demo), pair tokenization in the ingress by each checkpoint's own template, with long
documents truncated or chunked into windows (`tokenization`), length-sorted token-budget
packing and padding (`packing`), the engine (`engine`) over one backend per runtime
(`backends/`: torch, ONNX Runtime, OpenVINO), the exported and quantized graphs they load
(`exports`, `calibration`), and a replica's own measurements (`stats`).

May import: the shared modules; torch, transformers, tokenizers, onnxruntime, openvino.
Never HTTP or Ray.
"""
