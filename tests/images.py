"""Small deterministic test images in several sizes and modes."""

from __future__ import annotations

import numpy as np
from PIL import Image


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth gradients + noise, so resampling filters matter the way they do on photos
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 / max(width - 1, 1)), (y * 255 / max(height - 1, 1)),
                     ((x + y) * 127 / max(width + height - 2, 1))], axis=-1)
    arr = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        image = image.copy()
        image.putalpha(alpha)
        return image
    return image.convert(mode)


def mixed_batch() -> list[Image.Image]:
    return [random_image(64, 48, "RGB", 1), random_image(17, 33, "L", 2), random_image(40, 40, "RGBA", 3),
            random_image(300, 200, "RGB", 4), random_image(31, 90, "RGB", 5)]


TEXTS = [
    "a photo of a cat",
    "",
    "一只猫坐在沙发上",
    "café crème brûlée naïve!",
    "an astronaut riding a horse on the moon " * 8,  # longer than any tiny model's max length
    "Two BLUE squares, and a red circle.",
]
