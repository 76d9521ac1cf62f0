"""The graph kinds: HNSW, `ef` (efSearch) per query.

  hnsw     IndexHNSWFlat over float32 vectors
  hnswsq8  IndexHNSWSQ over 8-bit scalar-quantized vectors (4x smaller); shortlist re-ranked exactly

HNSW cannot remove a node, so deleted ids are tombstones excluded by an id selector until the graph is
compacted (more than 20% dead, or an id is re-added).
"""

from __future__ import annotations

import numpy as np

import faiss

from indexer.ann.base import VectorIndex

HNSW_DEAD_FRACTION = 0.2
HNSW_FILTER_EF_MAX = 4_096  # ef of a filtered pass; one that still comes back short is answered exactly


class HNSWIndex(VectorIndex):
    kind = "hnsw"
    trained = False

    @classmethod
    def graph(cls, spec, dim):
        return faiss.IndexHNSWFlat(dim, spec.param, faiss.METRIC_INNER_PRODUCT)

    @classmethod
    def create(cls, spec, dim, training, n):
        g = cls.graph(spec, dim)
        g.hnsw.efConstruction = 80
        g.hnsw.efSearch = 64
        if not g.is_trained:
            g.train(np.ascontiguousarray(training, dtype=np.float32))
        return cls(spec, dim, faiss.IndexIDMap2(g))

    @property
    def hnsw(self):
        return faiss.downcast_index(self.index.index).hnsw

    def _add(self, ids, vectors, present):
        revived = [int(i) for i in ids if int(i) in self._dead]
        if len(present) or revived:  # HNSW cannot overwrite a node: rebuild the graph without them
            self._compact(drop=np.concatenate([present, np.asarray(revived, np.int64)]))
        self.index.add_with_ids(vectors, ids)

    def _remove(self, ids):
        self._dead.update(int(i) for i in ids)
        if len(self._dead) > HNSW_DEAD_FRACTION * self.index.ntotal:
            self._compact()

    def _compact(self, drop: np.ndarray | None = None) -> None:
        """Rebuild the graph without tombstones (and `drop`), from the exact vectors where a source holds
        them, else from the graph's own (for hnswsq8: decoded) vectors."""
        all_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        gone = np.fromiter(self._dead, np.int64) if self._dead else np.zeros(0, np.int64)
        if drop is not None:
            gone = np.concatenate([gone, drop])
        keep_ids = all_ids[~np.isin(all_ids, gone)]
        if self.compressed and self.vector_source is not None:
            keep_ids, vecs = self.vector_source(keep_ids)
        else:
            vecs = self.index.index.reconstruct_n(0, self.index.ntotal)[~np.isin(all_ids, gone)]
        fresh = type(self).create(self.spec, self.dim, vecs if len(vecs) else None, len(vecs))
        fresh.hnsw.efSearch = self.hnsw.efSearch
        if len(keep_ids):
            fresh.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), keep_ids)
        self.index = fresh.index
        self._dead.clear()
        self._ids_cache = self._mask_cache = None  # a source may have lacked some (deleted meanwhile): list again

    def _search_params(self, k, nprobe, ef):
        return faiss.SearchParametersHNSW(efSearch=max(ef or self.hnsw.efSearch, k))

    def _filtered_effort(self, share, k, nprobe, ef):
        # the graph walk keeps ef candidates of which a share pass the filter: widen it to match
        return nprobe, min(HNSW_FILTER_EF_MAX, int(np.ceil(max(ef or self.hnsw.efSearch, k) / share)))

    def tuning(self) -> dict:
        return {"ef": int(self.hnsw.efSearch)}

    def tune(self, meta: dict) -> None:
        if "ef" in meta:
            self.hnsw.efSearch = int(meta["ef"])


class HNSWSQ8Index(HNSWIndex):
    kind = "hnswsq8"
    trained = True
    refine = 4

    @classmethod
    def graph(cls, spec, dim):
        return faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, spec.param, faiss.METRIC_INNER_PRODUCT)

    @classmethod
    def create(cls, spec, dim, training, n):
        if training is None or len(training) == 0:
            # no sample: the range every unit vector lies in (coarser steps than a fitted range)
            training = np.vstack([np.eye(dim), -np.eye(dim)]).astype(np.float32)
        return super().create(spec, dim, training, n)
