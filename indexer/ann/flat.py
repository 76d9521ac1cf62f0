"""flat: exact inner-product search over every stored float vector (IndexIDMap2(IndexFlatIP))."""

from __future__ import annotations

import faiss

from indexer.ann.base import VectorIndex


class FlatIndex(VectorIndex):
    kind = "flat"
    gpu_copy = True

    @classmethod
    def create(cls, spec, dim, training, n):
        return cls(spec, dim, faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
