"""Images in: the one image loader (`load_image`) and the Pillow pipelines built from a checkpoint's
`preprocessor_config.json` (old hub layout) or `processor_config.json` (current layout).

The pipeline reproduces transformers' Pillow backend step for step (RGB with alpha composited on white,
resize with the configured resample on uint8, center crop, rescale, normalize) so features match the
reference; `load_image` adds what files from the wild need (EXIF orientation, first frame, 16-bit,
bomb and corruption checks) and JPEG draft decoding when the model's input is much smaller than the file.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mmsearch.errors import CheckpointError, ImageError, TooLarge

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger files are refused as likely decompression bombs

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# Class defaults of the image processors our checkpoints name, for keys a config file leaves out.
PROCESSOR_DEFAULTS: dict[str, dict] = {
    "SiglipImageProcessor": dict(size={"height": 224, "width": 224}, resample=3, do_center_crop=False,
                                 image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD),
    "CLIPImageProcessor": dict(size={"shortest_edge": 224}, resample=3, do_center_crop=True,
                               crop_size={"height": 224, "width": 224},
                               image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD),
    "BlipImageProcessor": dict(size={"height": 384, "width": 384}, resample=3, do_center_crop=False,
                               image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD),
}
COMMON_DEFAULTS = dict(do_convert_rgb=True, do_resize=True, do_center_crop=False, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, resample=2,
                       image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white (what transformers does)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale -> 8-bit L, scaling instead of clipping."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(image, dtype=np.uint16)
        return Image.fromarray((arr >> 8).astype(np.uint8))
    if image.mode == "I":
        arr = np.asarray(image, dtype=np.int64)
        top = 65535 if arr.max(initial=0) > 255 else 255
        return Image.fromarray((np.clip(arr, 0, top) * (255 / top)).astype(np.uint8))
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray((np.clip(arr / top, 0, 1) * 255).round().astype(np.uint8))
    return image


def image_size(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels (before any EXIF rotation);
    ImageError when the bytes are not an image Pillow can read. For budgeting memory before load_image."""
    if not data:
        raise ImageError("empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as image:
                return image.size
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image ({exc})") from None


def load_image(source: str | os.PathLike | bytes | bytearray | memoryview, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file or bytes to an RGB PIL image, or raise ImageError saying why not.

    draft_size (w, h): the smallest size the caller needs; JPEGs then decode at a reduced DCT scale that
    still covers it, which is several times faster for camera-sized files."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("empty image (0 bytes)")
        stream, label = io.BytesIO(data), "image bytes"
    else:
        path = Path(source)
        label = str(path)
        if path.is_symlink() and not path.exists():
            raise ImageError(f"{label}: dangling symbolic link")
        try:
            if path.stat().st_size == 0:
                raise ImageError(f"{label}: empty file (0 bytes)")
            stream = open(path, "rb")
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a directory") from None
        except PermissionError:
            raise ImageError(f"{label}: permission denied") from None
        except OSError as exc:
            raise ImageError(f"{label}: unreadable ({exc.strerror or exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream)
            except UnidentifiedImageError:
                raise ImageError(f"{label}: not an image (unrecognised format)") from None
            except Image.DecompressionBombError as exc:
                raise TooLarge(f"{label}: refused as a decompression bomb ({exc})") from None
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise TooLarge(f"{label}: {width}x{height} = {width * height / 1e6:.0f} MP exceeds the limit of "
                               f"{max_pixels / 1e6:.0f} MP (possible decompression bomb)")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated: the first frame stands for the image
            if draft_size is not None and image.format == "JPEG":
                orientation = image.getexif().get(0x0112, 1)
                w, h = draft_size
                image.draft(None, (h, w) if orientation in (5, 6, 7, 8) else (w, h))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(_to_8bit(image))
    except (ImageError, TooLarge):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from None
    finally:
        stream.close()


def distinct_images(images: list[Image.Image]) -> tuple[list[Image.Image], list[int]]:
    """The distinct image objects (by identity) and, for each input, its index among them: a model that sees
    the same image several times (one image, many texts or questions) encodes it once."""
    seen: dict[int, int] = {}
    unique, index = [], []
    for image in images:
        if id(image) not in seen:
            seen[id(image)] = len(unique)
            unique.append(image)
        index.append(seen[id(image)])
    return unique, index


@dataclass
class ImagePreprocessor:
    """PIL images -> normalised float32 tensor (N, 3, H, W). Plain data, so it pickles into workers."""

    size: dict
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = False
    crop_size: dict | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = IMAGENET_STANDARD_MEAN
    image_std: tuple = IMAGENET_STANDARD_STD
    do_convert_rgb: bool = True
    # False: JPEGs are decoded at a reduced DCT scale that still covers the model's input (draft_size), several
    # times faster on camera files, vectors within a cosine of ~0.9999 of transformers' full decode; True:
    # full decode, the reference's pixels exactly (what `encoders.load(..., exact_decode=True)` and
    # `--exact-decode` set)
    exact_decode: bool = False
    _scale: np.ndarray = field(init=False, repr=False)
    _shift: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        mean = np.asarray(self.image_mean if self.do_normalize else (0.0, 0.0, 0.0), dtype=np.float32)
        std = np.asarray(self.image_std if self.do_normalize else (1.0, 1.0, 1.0), dtype=np.float32)
        factor = np.float32(self.rescale_factor if self.do_rescale else 1.0)
        self._scale = (factor / std).astype(np.float32)[:, None, None]
        self._shift = (mean / std).astype(np.float32)[:, None, None]

    @classmethod
    def from_config(cls, config: dict) -> "ImagePreprocessor":
        kind = config.get("image_processor_type", "").removesuffix("Fast").removesuffix("Pil")
        merged = {**COMMON_DEFAULTS, **PROCESSOR_DEFAULTS.get(kind, {}), **config}
        size = merged.get("size")
        if isinstance(size, int):  # very old configs: an int means a square
            size = {"height": size, "width": size}
        crop = merged.get("crop_size")
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(size=size, resample=int(merged["resample"]), do_resize=bool(merged["do_resize"]),
                   do_center_crop=bool(merged.get("do_center_crop")), crop_size=crop,
                   do_rescale=bool(merged["do_rescale"]), rescale_factor=float(merged["rescale_factor"]),
                   do_normalize=bool(merged["do_normalize"]), image_mean=tuple(merged["image_mean"]),
                   image_std=tuple(merged["image_std"]), do_convert_rgb=bool(merged.get("do_convert_rgb", True)))

    @classmethod
    def from_checkpoint_dir(cls, directory: str | os.PathLike) -> "ImagePreprocessor":
        """Read `processor_config.json` (its `image_processor` part) or `preprocessor_config.json`."""
        import json

        directory = Path(directory)
        for name in ("preprocessor_config.json", "processor_config.json"):
            path = directory / name
            if path.is_file():
                try:
                    config = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
                config = config.get("image_processor", config)
                if "image_mean" in config or "size" in config or "image_processor_type" in config:
                    return cls.from_config(config)
        raise CheckpointError(f"{directory}: no image preprocessing config "
                              "(looked for preprocessor_config.json and processor_config.json)")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the tensors this produces."""
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        edge = self.size["shortest_edge"]
        return edge, edge

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """(w, h) a JPEG may be draft-decoded down to without falling below what resize needs; None in exact
        mode (decode in full, as the reference does). Pass it to load_image."""
        if self.exact_decode:
            return None
        if "height" in self.size:
            return self.size["width"], self.size["height"]
        edge = self.size["shortest_edge"]
        return edge, edge

    def resize_target(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after resize, following transformers' rules for each `size` form."""
        if "height" in self.size and "width" in self.size:
            return self.size["height"], self.size["width"]
        edge = self.size["shortest_edge"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        return (new_long, edge) if width <= height else (edge, new_long)

    def input_view(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the part of a width x height image the model sees (after resize and
        center crop), in the image's own pixel coordinates; parts of a crop beyond the image (padding) lie
        outside 0..width / 0..height."""
        h, w = self.resize_target(width, height) if self.do_resize else (height, width)
        sx, sy = width / w, height / h
        if self.do_center_crop and self.crop_size:
            ch, cw = self.crop_size["height"], self.crop_size["width"]
            # as center_crop: centred, and a side shorter than the crop is padded, the extra pixel at the start
            top = (h - ch) // 2 if h >= ch else -((ch - h + 1) // 2)
            left = (w - cw) // 2 if w >= cw else -((cw - w + 1) // 2)
            return left * sx, top * sy, (left + cw) * sx, (top + ch) * sy
        return 0.0, 0.0, float(width), float(height)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 (3, H, W)."""
        if self.do_convert_rgb:
            image = to_rgb(image)
        if self.do_resize:
            h, w = self.resize_target(*image.size)
            if (w, h) != image.size:
                image = image.resize((w, h), resample=self.resample)
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = arr.transpose(2, 0, 1)
        if self.do_center_crop and self.crop_size:
            arr = center_crop(arr, self.crop_size["height"], self.crop_size["width"])
        out = arr.astype(np.float32)
        if self.do_rescale and not self.do_normalize:
            return (out.astype(np.float64) * self.rescale_factor).astype(np.float32)
        # rescale and normalize folded into one multiply-add: x * (f / std) - mean / std
        out *= self._scale
        out -= self._shift
        return out

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            h, w = self.output_size
            return torch.empty(0, 3, h, w)
        return torch.from_numpy(np.stack([self.to_array(im) for im in images]))


def center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Crop (C, H, W) around the centre; pad with zeros where the image is smaller (as transformers does)."""
    _, height, width = arr.shape
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return arr[:, top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((arr.shape[0], new_h, new_w), dtype=arr.dtype)
    pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    padded[:, pad_top:pad_top + height, pad_left:pad_left + width] = arr
    top, left = top + pad_top, left + pad_left
    return padded[:, max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]
