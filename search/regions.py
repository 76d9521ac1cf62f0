"""Where in an image a text query matched: the region GroupViT's groups assign to the query.

    region = match_region(groupvit_encoder, image, "a red circle")
    region.mask_png   # 1-bit PNG over region.view (the part of the image the model sees), white = the region
    region.box        # (x0, y0, x1, y1) bounding box of the region in the image's own pixels

GroupViT scores every input pixel against a text through its chained soft group assignments
(GroupViTEncoder.segmentation_logits, equal to transformers' output_segmentation). The region is the set of
pixels that score in the upper half of that image's range for the query: the part that matched best,
relative to the rest of the same image (a single query has no other label to win against).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from mmsearch.errors import InvalidInput


@dataclass
class Region:
    mask_png: bytes
    view: tuple[float, float, float, float]   # where the mask lies in the image: left, top, right, bottom
    box: tuple[int, int, int, int]            # the region's bounding box in image pixels: x0, y0, x1, y1
    score: float                              # the best pixel's cosine with the query (logit / scale^2)
    coverage: float                           # the region's share of the view


def region_mask(logits: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels in the upper half of the logits' range (all of them when the map is flat)."""
    low, high = float(logits.min()), float(logits.max())
    return logits >= (low + high) / 2 if high > low else np.ones_like(logits, dtype=bool)


def match_regions(encoder, images: list, text: str) -> list[Region]:
    """One Region per image for the query `text` (encoder: a GroupViT DualEncoder)."""
    from PIL import Image

    if not hasattr(encoder, "segmentation_logits"):
        raise InvalidInput(f"regions need a GroupViT collection; this one uses {getattr(encoder, 'family', '?')}")
    logits = encoder.segmentation_logits(list(images), [text])[:, 0]  # (n, H, W)
    scale = float(encoder.model.logit_scale.float().exp()) ** 2
    regions = []
    for image, heat in zip(images, logits):
        mask = region_mask(heat)
        height, width = mask.shape
        left, top, right, bottom = encoder.image_preprocessor.input_view(*image.size)
        ys, xs = np.nonzero(mask)
        sx, sy = (right - left) / width, (bottom - top) / height
        box = (max(0, int(left + xs.min() * sx)), max(0, int(top + ys.min() * sy)),
               min(image.width, int(np.ceil(left + (xs.max() + 1) * sx))),
               min(image.height, int(np.ceil(top + (ys.max() + 1) * sy))))
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, "PNG", optimize=True)
        regions.append(Region(mask_png=buf.getvalue(), view=(left, top, right, bottom), box=box,
                              score=float(heat.max()) / scale, coverage=float(mask.mean())))
    return regions
