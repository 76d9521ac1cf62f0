"""Pure-torch image and text encoders that load Hugging Face checkpoints directly."""

from mmsearch.errors import CheckpointError, ImageError

from .api import Answerer, Captioner, DualEncoder, Reranker, load, load_answerer, load_captioner, load_reranker

__all__ = ["load", "load_reranker", "load_captioner", "load_answerer", "DualEncoder", "Reranker", "Captioner",
           "Answerer", "CheckpointError", "ImageError"]
