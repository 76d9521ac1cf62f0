"""The four contracts (DualEncoder, Reranker, Captioner, Answerer) and the loaders that pick a family by the
checkpoint's `model_type`.

Each family module registers builders with `@dual_encoder("model_type")`, `@reranker(...)`,
`@captioner(...)` or `@answerer(...)`; a builder gets the opened Checkpoint, a device and a dtype and returns
the contract object. The families are imported on first use (see FAMILY_MODULES).
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from .checkpoint import Checkpoint, open_checkpoint
from mmsearch.errors import CheckpointError, InvalidInput, MMSearchError
from .layers import l2_normalize
from .preprocess import ImagePreprocessor
from .tokenize import Tokenizer

FAMILY_MODULES = ["siglip", "clip", "altclip", "groupvit", "blip", "blip2"]

Builder = Callable[[Checkpoint, torch.device, torch.dtype], object]
_DUAL: dict[str, Builder] = {}
_RERANK: dict[str, Builder] = {}
_CAPTION: dict[str, Builder] = {}
_ANSWER: dict[str, Builder] = {}


def _register(table: dict[str, Builder], model_types: tuple[str, ...]):
    def wrap(fn: Builder) -> Builder:
        for model_type in model_types:
            table[model_type] = fn
        return fn
    return wrap


def dual_encoder(*model_types: str):
    return _register(_DUAL, model_types)


def reranker(*model_types: str):
    return _register(_RERANK, model_types)


def captioner(*model_types: str):
    return _register(_CAPTION, model_types)


def answerer(*model_types: str):
    return _register(_ANSWER, model_types)


def _import_families() -> None:
    for name in FAMILY_MODULES:
        try:
            importlib.import_module(f"encoders.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"encoders.{name}":
                raise


def resolve_device_dtype(device: str | torch.device | None, dtype: str | torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' requested but no CUDA GPU is available")
    names = {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in names:
        resolved = names[dtype]
    else:
        raise InvalidInput(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    if resolved == torch.float16 and device.type == "cpu":
        raise InvalidInput("float16 is for CUDA; on CPU use bfloat16 (or float32)")
    return device, resolved


def _build(table: dict[str, Builder], what: str, path_or_id, device, dtype, exact_decode: bool):
    device, dtype = resolve_device_dtype(device, dtype)
    ckpt = open_checkpoint(path_or_id)
    _import_families()
    builder = table.get(ckpt.model_type)
    if builder is None:
        known = ", ".join(sorted(table)) or "none"
        raise CheckpointError(f"{ckpt.dir / 'config.json'}: model_type {ckpt.model_type!r} cannot be loaded as a {what} "
                              f"(supported: {known})")
    try:
        built = builder(ckpt, device, dtype)
    except MMSearchError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # a config the family cannot build
        raise CheckpointError(f"{ckpt.dir}: cannot build a {what} from this checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    built.image_preprocessor.exact_decode = bool(exact_decode)
    return built


# exact_decode=True: image files are decoded in full (the reference's pixels) instead of in JPEG draft mode (see
# ImagePreprocessor.exact_decode), wherever files are decoded for the model through load_image with the
# preprocessor's draft_size: the bulk indexer and `mmsearch embed`.

def load(path_or_id: str | os.PathLike, device: str | torch.device | None = "cpu",
         dtype: str | torch.dtype | None = None, *, exact_decode: bool = False) -> "DualEncoder":
    """A DualEncoder for a SigLIP, CLIP, AltCLIP, GroupViT or BLIP retrieval checkpoint."""
    return _build(_DUAL, "dual encoder", path_or_id, device, dtype, exact_decode)


def load_reranker(path_or_id: str | os.PathLike, device: str | torch.device | None = "cpu",
                  dtype: str | torch.dtype | None = None, *, exact_decode: bool = False) -> "Reranker":
    """An image-text matching scorer for a BLIP or BLIP-2 ITM checkpoint."""
    return _build(_RERANK, "reranker", path_or_id, device, dtype, exact_decode)


def load_captioner(path_or_id: str | os.PathLike, device: str | torch.device | None = "cpu",
                   dtype: str | torch.dtype | None = None, *, exact_decode: bool = False) -> "Captioner":
    """A captioner for a BLIP captioning or BLIP-2 (OPT / Flan-T5) checkpoint."""
    return _build(_CAPTION, "captioner", path_or_id, device, dtype, exact_decode)


def load_answerer(path_or_id: str | os.PathLike, device: str | torch.device | None = "cpu",
                  dtype: str | torch.dtype | None = None, *, exact_decode: bool = False) -> "Answerer":
    """A visual question answerer for a BLIP VQA or a BLIP-2 (OPT / Flan-T5, prompted) checkpoint."""
    return _build(_ANSWER, "question answerer", path_or_id, device, dtype, exact_decode)


class TwoTowerModel(Protocol):
    """What a family's torch module offers the DualEncoder: unnormalised features."""

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor: ...


class DualEncoder:
    """Images and texts -> L2-normalised float32 vectors in one space (the contract in DESIGN.md)."""

    def __init__(self, *, name: str, family: str, model: TwoTowerModel, dim: int, digest: str,
                 image_preprocessor: ImagePreprocessor, tokenizer: Tokenizer, device: torch.device,
                 dtype: torch.dtype, use_attention_mask: bool = True, image_batch: int = 32, text_batch: int = 64):
        self.name, self.family, self.dim, self.digest = name, family, dim, digest
        self.model = model
        self.image_preprocessor = image_preprocessor
        self.tokenizer = tokenizer
        self.device, self.dtype = device, dtype
        self.use_attention_mask = use_attention_mask
        self.image_batch, self.text_batch = image_batch, text_batch

    def __repr__(self) -> str:
        return f"DualEncoder({self.family}, {self.name!r}, dim={self.dim}, {self.dtype}, {self.device})"

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        images = list(images)
        chunks = [self.encode_pixels(self.image_preprocessor(images[i:i + self.image_batch]))
                  for i in range(0, len(images), self.image_batch)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def encode_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            pixels = pixel_values.to(self.device, self.dtype)
            feats = self.model.image_features(pixels)
            return l2_normalize(feats.float()).cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.text_batch):
                enc = self.tokenizer(texts[i:i + self.text_batch])
                mask = enc.attention_mask.to(self.device) if self.use_attention_mask else None
                feats = self.model.text_features(enc.input_ids.to(self.device), mask)
                out.append(l2_normalize(feats.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class Reranker(Protocol):
    name: str

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """float32 (n,): P(match) of pair i (ITM softmax, class 1)."""
        ...


class Captioner(Protocol):
    name: str

    def caption(self, images: list[Image.Image], prompt: str | None = None, max_new_tokens: int = 30,
                num_beams: int = 1) -> list[str]:
        ...


class Answerer(Protocol):
    name: str

    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 20,
               num_beams: int = 1) -> list[str]:
        """One answer per question, about the image at the same position (or the single image given)."""
        ...


MAX_NEW_TOKENS = 512
MAX_BEAMS = 16


def check_generation(max_new_tokens, num_beams) -> tuple[int, int]:
    """The generation settings as ints, or InvalidInput saying which one is out of range."""
    for name, value, top in (("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS), ("num_beams", num_beams, MAX_BEAMS)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= top:
            raise InvalidInput(f"{name} must be an integer between 1 and {top}, got {value!r}")
    return int(max_new_tokens), int(num_beams)


def question_pairs(images, questions) -> tuple[list[Image.Image], list[str]]:
    """(images, questions) as two lists of the same length: one image may stand for every question. Anything
    else (a question that is not a string, a count mismatch) is an InvalidInput."""
    images, questions = list(images), list(questions)
    for q in questions:
        if not isinstance(q, str):
            raise InvalidInput(f"questions must be strings, got {type(q).__name__}")
    for image in images:
        if not isinstance(image, Image.Image):
            raise InvalidInput(f"images must be PIL images, got {type(image).__name__}")
    if len(images) == 1 and len(questions) > 1:
        images = images * len(questions)
    if len(images) != len(questions):
        raise InvalidInput(f"answer() needs one image per question (or a single image): got {len(images)} images "
                           f"and {len(questions)} questions")
    return images, questions
