"""Pure-torch image and text encoders that load Hugging Face checkpoints directly."""

from . import errors
from .api import Captioner, DualEncoder, Reranker, load, load_captioner, load_reranker
from .errors import CheckpointError, ImageError

__all__ = ["load", "load_reranker", "load_captioner", "DualEncoder", "Reranker", "Captioner", "errors",
           "CheckpointError", "ImageError"]
