"""Full-size checkpoints with random weights (and camera-sized JPEGs) that the benchmarks share, built with
transformers once and cached under the bench work directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import harness  # noqa: F401  (import paths: tests/ for the tiny-checkpoint helpers)


def make_siglip_base(directory: Path) -> Path:
    """google/siglip-base-patch16-224 architecture (transformers defaults), random weights."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTokenizer

    from tiny_checkpoints import train_sentencepiece

    if (directory / "config.json").is_file():
        return directory
    sp = train_sentencepiece(directory / "_sp", vocab_size=400)
    torch.manual_seed(0)
    SiglipModel(SiglipConfig()).save_pretrained(directory)
    SiglipProcessor(image_processor=SiglipImageProcessorPil(), tokenizer=SiglipTokenizer(str(sp), model_max_length=64)
                    ).save_pretrained(directory)
    return directory


def make_jpegs(directory: Path, count: int, width: int = 4000, height: int = 3000) -> list[Path]:
    """12-megapixel camera-like JPEGs (smooth shading, shapes, sensor noise)."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = directory / f"photo_{i}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        y, x = np.mgrid[0:height:4, 0:width:4]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
        small = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
        image = small.resize((width, height), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        for k in range(20):
            cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(50, 600)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image.save(path, quality=92)
    return paths
