"""The inverted-file kinds: k-means lists over the vectors, `nprobe` lists scanned per query.

  ivf      IVF{nlist},Flat     float32 codes: the scan is exact within the probed lists
  ivfsq8   IVF{nlist},SQ8      one byte per dimension (4x smaller); shortlist re-ranked exactly
  ivfsq16  IVF{nlist},SQfp16   two bytes per dimension (2x smaller); shortlist re-ranked exactly
  ivfpq    OPQ{m},IVF{nlist},PQ{m}  m bytes per vector (768-d, m=96: 32x smaller) after an OPQ rotation;
                               shortlist re-ranked exactly

Deletes remove ids through a hash-table direct map (id -> list, offset).
"""

from __future__ import annotations

import numpy as np

import faiss

from mmsearch.errors import InvalidInput
from indexer.ann.base import VectorIndex
from indexer.ann.spec import default_nprobe

IVF_EXACT_MAX = 1_024  # allowed ids scored exactly; above, a pass under a bitmap (base.py: _filtered)


class IVFIndex(VectorIndex):
    kind = "ivf"
    gpu_copy = True
    trained = True
    code = "Flat"

    def __init__(self, spec, dim, index, **kw):
        super().__init__(spec, dim, index, **kw)
        self.ivf.nprobe = default_nprobe(self.ivf.nlist)

    @property
    def ivf(self):
        return faiss.extract_index_ivf(self.index)

    @classmethod
    def factory(cls, spec) -> str:
        return f"IVF{spec.param},{cls.code}"

    @classmethod
    def create(cls, spec, dim, training, n):
        if training is None or len(training) < spec.param:
            raise InvalidInput(f"{spec} needs at least {spec.param} vectors to train on "
                               f"({0 if training is None else len(training)} given); use flat for small collections")
        index = faiss.index_factory(dim, cls.factory(spec), faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.max_points_per_centroid = 64  # bound training time: 64 points and 10 rounds per centroid
        ivf.cp.niter = 10
        cls.bound_training(index)
        index.train(np.ascontiguousarray(training, dtype=np.float32))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove / reconstruct by item id
        return cls(spec, dim, index, trained_n=max(n, len(training)))

    @classmethod
    def bound_training(cls, index) -> None:
        pass

    def _own_payload(self) -> None:
        """Copy the mapped inverted lists (and the small quantizer) into owned ones, list by list: one copy of
        the codes in memory, where a serialized copy holds two at once and reads every byte twice (measured,
        a 100 MB payload: peak RSS 247 MB against 443 MB). The direct map is owned already."""
        ivf = self.ivf
        mapped = ivf.invlists
        owned = faiss.ArrayInvertedLists(mapped.nlist, mapped.code_size)
        for lst in range(mapped.nlist):
            n = mapped.list_size(lst)
            if n:
                owned.add_entries(lst, n, mapped.get_ids(lst), mapped.get_codes(lst))
        ivf.replace_invlists(owned, True)  # the index owns (and frees) the lists; the mapped ones go
        owned.this.disown()
        old = ivf.quantizer
        quantizer = faiss.IndexFlat(ivf.d, old.metric_type)
        quantizer.add(old.reconstruct_n(0, old.ntotal))
        ivf.quantizer = quantizer
        quantizer.this.disown()  # owned by the index (own_fields) from now on
        old.this.acquire()  # ... and the mapped one is freed with this Python reference

    def _stored_ids(self) -> np.ndarray:
        inv = self.ivf.invlists
        parts = [faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
                 for lst in range(inv.nlist) if inv.list_size(lst)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _remove_ids(self, ids: np.ndarray) -> None:
        # the hash-table direct map removes by lookup and only takes an array
        self.index.remove_ids(faiss.IDSelectorArray(ids))

    def _search_params(self, k, nprobe, ef):
        return faiss.SearchParametersIVF(nprobe=nprobe or self.ivf.nprobe)

    def _exact_max(self, k: int) -> int:
        # float vectors by id come through the direct map one at a time: slower than a pass under a bitmap
        # beyond about a thousand ids; compressed kinds read them from the catalog, where a pass reads k * refine
        if self.compressed and self.vector_source is not None:
            return k * self.refine
        return IVF_EXACT_MAX

    def _filtered_effort(self, share, k, nprobe, ef):
        """As many allowed vectors scanned as an unrestricted search scans vectors: nprobe / share lists;
        all of them (an exhaustive scan of the allowed ids, exact for ivf) once the share is below
        nprobe / nlist."""
        nlist = self.ivf.nlist
        return min(nlist, int(np.ceil((nprobe or self.ivf.nprobe) / share))), ef

    def _exhaustive(self, queries, k, sel, allowed):
        scores, ids = self._shortlist(queries, k, sel, self.ivf.nlist, None)
        if (ids < 0).any():  # fewer than k allowed, or (compressed) some deleted since the catalog read
            return super()._exhaustive(queries, k, sel, allowed)
        return scores, ids

    def tuning(self) -> dict:
        return {"nprobe": int(self.ivf.nprobe)}

    def tune(self, meta: dict) -> None:
        if "nprobe" in meta:
            self.ivf.nprobe = int(meta["nprobe"])

    def _tune_gpu(self, gpu_index, nprobe) -> None:
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe or self.ivf.nprobe)


class IVFSQ8Index(IVFIndex):
    kind = "ivfsq8"
    gpu_copy = False
    code = "SQ8"
    refine = 4


class IVFSQ16Index(IVFIndex):
    kind = "ivfsq16"
    gpu_copy = False
    code = "SQfp16"
    refine = 2


class IVFPQIndex(IVFIndex):
    kind = "ivfpq"
    gpu_copy = False
    refine = 10

    @classmethod
    def factory(cls, spec) -> str:
        return f"OPQ{spec.m},IVF{spec.param},PQ{spec.m}"

    @classmethod
    def create(cls, spec, dim, training, n):
        if dim % spec.m:
            raise InvalidInput(f"{spec}: PQ m={spec.m} must divide the dim {dim}")
        return super().create(spec, dim, training, n)

    @classmethod
    def bound_training(cls, index) -> None:
        # FAISS's defaults (50 OPQ rounds, polysemous training) took minutes on 12k x 32-d here; a few OPQ rounds
        # on a bounded sample keep most of the rotation's gain, and the PQ k-means gets the IVF's limits
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        opq.niter, opq.niter_pq, opq.max_train_points = 6, 2, 20_000
        ivfpq = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivfpq.do_polysemous_training = False  # the factory's default; its annealing is for Hamming search only
        ivfpq.pq.cp.niter, ivfpq.pq.cp.max_points_per_centroid = 10, 64

    def _search_params(self, k, nprobe, ef):
        inner = super()._search_params(k, nprobe, ef)
        params = faiss.SearchParametersPreTransform(index_params=inner)
        params.keep = inner  # the SWIG object must outlive the call
        return params

    def _set_selector(self, params, sel) -> None:
        params.keep.sel = sel
