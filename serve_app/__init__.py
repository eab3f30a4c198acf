"""Multi-model cross-encoder rerank service on Ray Serve."""

__version__ = "0.1.0"
