"""Helpers shared by the indexer tests: write catalog rows with known vectors, compare index and catalog."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from indexer.catalog import NewItem


@dataclass
class FakeBinding:
    """Only the encoder identity a collection is bound to (name, family, digest, dim): enough for tests that
    write vectors straight into the catalog and never encode anything."""

    name: str = "test-encoder"
    family: str = "siglip"
    digest: str = "0" * 32
    dim: int = 16


def clustered(n: int, dim: int, *, clusters: int = 20, seed: int = 0, spread: float = 0.3) -> np.ndarray:
    """L2-normalised vectors from a Gaussian mixture (what real embeddings look like, roughly)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add_rows(handle, vectors: np.ndarray, *, meta=None, start: int = 0) -> np.ndarray:
    """Insert one catalog item per vector (as another process's job would) and return their ids; the open
    index is not touched."""
    items = []
    for i, v in enumerate(vectors):
        tag = f"{start + i}"
        items.append(NewItem(uri=f"mem://{tag}", sha256=hashlib.sha256(tag.encode()).hexdigest(), width=1,
                             height=1, meta=(meta(start + i) if meta else {"n": start + i}),
                             vector=np.asarray(v, "<f4").tobytes()))
    with handle.catalog.write(handle.id) as (s, rev):
        return handle.catalog.insert_items(s, handle.id, rev, items)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ vectors.T
    order = np.lexsort((np.broadcast_to(ids, sims.shape), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


def assert_index_matches_catalog(handle) -> None:
    """Catalog live ids == index ids, and each indexed vector equals the catalog's."""
    live = np.sort(handle.catalog.select_ids(handle.id))
    index = handle.refresh()
    assert np.array_equal(index.ids(), live), (len(index.ids()), len(live))
    if len(live):
        stored = handle.get(live[:50])
        got = index.index.reconstruct_batch(live[:50])
        for row_id, vec in zip(live[:50], got):
            if index.compressed:  # codes, not floats: the decoded vector is near the stored one
                assert float(vec @ stored[int(row_id)].vector_array()) > 0.9
            else:
                np.testing.assert_array_equal(vec, stored[int(row_id)].vector_array())
