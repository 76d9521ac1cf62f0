"""Pure-torch image and text encoders that load Hugging Face checkpoints directly."""

from mmsearch.errors import CheckpointError, ImageError

from .api import Captioner, DualEncoder, Reranker, load, load_captioner, load_reranker

__all__ = ["load", "load_reranker", "load_captioner", "DualEncoder", "Reranker", "Captioner",
           "CheckpointError", "ImageError"]
