"""Shared setup for the search tests: a data dir with a small collection of real image files."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from images import random_image

COLORS = ["red", "green", "blue"]


def png_bytes(seed: int, width: int = 40, height: int = 30) -> bytes:
    buf = io.BytesIO()
    random_image(width, height, seed=seed).save(buf, "PNG")
    return buf.getvalue()


def item_meta(i: int) -> dict:
    return {"i": i, "even": i % 2 == 0, "color": COLORS[i % 3]}


def populate(store, name: str, enc, image_dir: Path, n: int = 24) -> dict[int, int]:
    """Collection `name` bound to `enc` holding n PNG files from image_dir; returns {seed: item id}."""
    from encoders.preprocess import load_image
    from indexer.store import UpsertRow

    handle = store.create_collection(name, enc)
    image_dir.mkdir(parents=True, exist_ok=True)
    rows, seeds = [], []
    for i in range(n):
        data = png_bytes(i, 32 + i, 30 + (i % 5))
        path = image_dir / f"img{i:03d}.png"
        path.write_bytes(data)
        image = load_image(data)
        vec = enc.encode_images([image])[0]
        rows.append(UpsertRow(uri=str(path), sha256=hashlib.sha256(data).hexdigest(), width=image.width,
                              height=image.height, vector=vec, meta=item_meta(i)))
        seeds.append(i)
    ids = [item_id for item_id, problem in handle.upsert(rows)]
    return dict(zip(seeds, ids))


def brute_force(handle, query: np.ndarray, k: int, allowed=None) -> list[tuple[int, float]]:
    """Exact top-k (id, score) over the live items, ties by id."""
    ids, _dead, vecs, _ = next(handle.catalog.all_live(handle.id))
    if allowed is not None:
        keep = np.isin(ids, np.fromiter(allowed, np.int64))
        ids, vecs = ids[keep], vecs[keep]
    scores = vecs @ (query / np.linalg.norm(query))
    order = sorted(range(len(ids)), key=lambda j: (-scores[j], ids[j]))[:k]
    return [(int(ids[j]), float(scores[j])) for j in order]
