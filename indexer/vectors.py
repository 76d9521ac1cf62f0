"""One FAISS index per collection: choose, build, add, remove, search, persist.

Index ids are catalog item ids (int64); vectors are L2-normalised and compared by inner product.
Kinds (the user-facing spec string in brackets):

  flat  ["flat"]             IndexIDMap2(IndexFlatIP): exact; the default for small collections.
  ivf   ["ivf" | "ivf<N>"]   IndexIVFFlat, nlist about 8*sqrt(n), k-means trained on catalog vectors;
                             `nprobe` per query. Deletes remove ids (hash-table direct map).
  hnsw  ["hnsw" | "hnsw<M>"] IndexIDMap2(IndexHNSWFlat); `ef` (efSearch) per query. HNSW cannot remove, so
                             deleted ids are tombstones excluded by an id selector until the graph is
                             compacted (more than 20% dead, or an id is re-added).
  auto  ["auto"]             flat below AUTO_FLAT_MAX items, ivf above; re-chosen as the collection grows.

A restriction to a set of allowed ids (a metadata filter) is answered exactly when the set is small
(gathering those vectors costs less than a scan) and with an id selector otherwise; either way the
caller gets a full top-k when at least k ids are allowed.

When FAISS sees GPUs, flat and ivf searches without a restriction run on a GPU copy; writes go to the
CPU index and mark the copy stale, and it is re-cloned before the next search.

A persisted index is one file: a magic line, a JSON header (collection id + uid, encoder digest, dim,
spec, the catalog watermark it covers, a CRC of the payload), the serialized FAISS index, and for hnsw
the tombstone ids. `save` writes a temp file, fsyncs, renames over the target and fsyncs the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from mmsearch.errors import InvalidInput

# faiss's loader reports at INFO which CPU build it tried ("Could not load library with AVX512 support"),
# noise in every server log; its warnings still show.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

log = logging.getLogger("mmsearch.indexer")

MAGIC = b"MMSEARCH-FAISS\n"
FORMAT = 1
AUTO_FLAT_MAX = 50_000  # exact search below this many items
EXACT_FILTER_MAX = 20_000  # allowed-id sets up to this size are scored exactly
HNSW_DEAD_FRACTION = 0.2


class IndexFileError(Exception):
    """An index file that cannot be used (unreadable, corrupt, foreign); the caller rebuilds it."""


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # "auto" | "flat" | "ivf" | "hnsw"
    param: int | None = None  # ivf: nlist; hnsw: M

    @classmethod
    def parse(cls, text: str | None) -> "IndexSpec":
        s = (text or "auto").strip().lower()
        m = re.fullmatch(r"(auto|flat|ivf|hnsw)(\d+)?", s)
        if not m or (m.group(2) and m.group(1) in ("auto", "flat")):
            raise InvalidInput(f"index spec {text!r}: use auto, flat, ivf, ivf<nlist>, hnsw or hnsw<M>")
        param = int(m.group(2)) if m.group(2) else None
        if param is not None and not (m.group(1) == "ivf" and 1 <= param <= 1 << 20
                                      or m.group(1) == "hnsw" and 4 <= param <= 256):
            raise InvalidInput(f"index spec {text!r}: nlist must be 1..1048576, HNSW M 4..256")
        return cls(m.group(1), param)

    def __str__(self) -> str:
        return self.kind + (str(self.param) if self.param else "")

    def resolve(self, n: int) -> "IndexSpec":
        """The concrete spec for a collection of n items."""
        if self.kind == "auto":
            return IndexSpec("flat") if n < AUTO_FLAT_MAX else IndexSpec("ivf", default_nlist(n))
        if self.kind == "ivf" and self.param is None:
            return IndexSpec("ivf", default_nlist(n))
        if self.kind == "hnsw" and self.param is None:
            return IndexSpec("hnsw", 32)
        return self


def default_nlist(n: int) -> int:
    # 4..16 * sqrt(n) is the usual range; at the low end the coarse quantizer stays cheap at 10^5-10^6 items
    # (bench/ann.py). k-means wants >= 39 training points per list.
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39)))


def default_nprobe(nlist: int) -> int:
    return max(1, min(nlist, round(nlist / 48)))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


class VectorIndex:
    """A FAISS index over (item id, vector) pairs of one collection plus the catalog watermark it covers."""

    def __init__(self, spec: IndexSpec, dim: int, index: faiss.Index, *, watermark: int = 0,
                 trained_n: int = 0, dead: np.ndarray | None = None):
        self.spec, self.dim, self.index = spec, dim, index
        self.watermark = watermark
        self.trained_n = trained_n  # collection size the ivf quantizer was trained for
        self._dead: set[int] = set(int(i) for i in (dead if dead is not None else ()))
        self._ids_cache: np.ndarray | None = None
        self._gpu = None
        self._gpu_stale = True
        self._gpu_failed = False
        self._lock = threading.RLock()
        if spec.kind == "ivf":
            self.index.nprobe = default_nprobe(self.index.nlist)

    # ---- construction --------------------------------------------------------------------------------------

    @classmethod
    def empty(cls, spec: IndexSpec, dim: int, training: np.ndarray | None = None, *, n_hint: int = 0
              ) -> "VectorIndex":
        """A new empty index. ivf needs `training` vectors (its quantizer is fit on them)."""
        spec = spec.resolve(max(n_hint, 0 if training is None else len(training)))
        if spec.kind == "flat":
            return cls(spec, dim, faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        if spec.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, spec.param, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 80
            hnsw.hnsw.efSearch = 64
            return cls(spec, dim, faiss.IndexIDMap2(hnsw))
        if training is None or len(training) < spec.param:
            raise InvalidInput(f"ivf{spec.param} needs at least {spec.param} vectors to train on "
                               f"({0 if training is None else len(training)} given); use flat for small collections")
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, spec.param, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = 64  # bound training time: 64 points and 10 rounds per centroid
        ivf.cp.niter = 10
        ivf.train(np.ascontiguousarray(training, dtype=np.float32))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove / reconstruct by item id
        ivf.own_fields = True
        quantizer.this.disown()
        return cls(spec, dim, ivf, trained_n=max(n_hint, len(training)))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self._dead)

    def ids(self) -> np.ndarray:
        """Sorted item ids present in the index (tombstones excluded)."""
        with self._lock:
            if self._ids_cache is None:
                if self.spec.kind == "ivf":
                    inv = self.index.invlists
                    parts = [faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
                             for lst in range(inv.nlist) if inv.list_size(lst)]
                    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
                else:
                    ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
                if self._dead:
                    ids = ids[~np.isin(ids, np.fromiter(self._dead, np.int64))]
                self._ids_cache = np.sort(ids)
            return self._ids_cache

    # ---- writes ---------------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under item ids."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        if len(np.unique(ids)) != len(ids):
            raise InvalidInput("add: duplicate ids in one call")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise InvalidInput(f"vectors have shape {vectors.shape}, index expects ({len(ids)}, {self.dim})")
        with self._lock:
            present = self._present(ids)
            if self.spec.kind == "hnsw":
                revived = [int(i) for i in ids if int(i) in self._dead]
                if len(present) or revived:  # HNSW cannot overwrite a node: rebuild the graph without them
                    self._compact(drop=np.concatenate([present, np.asarray(revived, np.int64)]))
            elif len(present):
                self._remove_ids(present)
            self.index.add_with_ids(vectors, ids)
            self._changed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove item ids (absent ones are ignored); returns how many were present."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        with self._lock:
            ids = self._present(ids)
            if len(ids) == 0:
                return 0
            if self.spec.kind == "hnsw":
                self._dead.update(int(i) for i in ids)
                if len(self._dead) > HNSW_DEAD_FRACTION * self.index.ntotal:
                    self._compact()
            else:
                self._remove_ids(ids)
            self._changed()
            return len(ids)

    def _remove_ids(self, ids: np.ndarray) -> None:
        # the ivf hash-table direct map removes by lookup and only takes an array; IDMap2 scans with a set
        sel = faiss.IDSelectorArray(ids) if self.spec.kind == "ivf" else faiss.IDSelectorBatch(ids)
        self.index.remove_ids(sel)

    def _compact(self, drop: np.ndarray | None = None) -> None:
        """Rebuild the HNSW graph from its own stored vectors, without tombstones (and `drop`)."""
        all_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        gone = np.fromiter(self._dead, np.int64) if self._dead else np.zeros(0, np.int64)
        if drop is not None:
            gone = np.concatenate([gone, drop])
        keep = ~np.isin(all_ids, gone)
        vecs = self.index.index.reconstruct_n(0, self.index.ntotal)[keep]
        fresh = VectorIndex.empty(self.spec, self.dim)
        fresh._hnsw().efSearch = self._hnsw().efSearch
        if keep.any():
            fresh.index.add_with_ids(vecs, all_ids[keep])
        self.index = fresh.index
        self._dead.clear()

    def _hnsw(self):
        return faiss.downcast_index(self.index.index).hnsw

    def _changed(self) -> None:
        self._ids_cache = None
        self._gpu_stale = True

    # ---- search ---------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               nprobe: int | None = None, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (m, k) float32, ids (m, k) int64), missing slots are id -1.
        `allowed` restricts results to those item ids; `nprobe` (ivf) and `ef` (hnsw) trade speed for recall."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise InvalidInput(f"query vectors have dim {queries.shape[1]}, the index has dim {self.dim}")
        if not 1 <= k <= 10_000:
            raise InvalidInput(f"k must be 1..10000, got {k}")
        if nprobe is not None and not 1 <= nprobe <= 1 << 20:
            raise InvalidInput(f"nprobe must be >= 1, got {nprobe}")
        if ef is not None and not 1 <= ef <= 1 << 16:
            raise InvalidInput(f"ef must be 1..65536, got {ef}")
        with self._lock:
            if allowed is not None:
                allowed = self._present(np.asarray(allowed, dtype=np.int64))
                if len(allowed) <= max(EXACT_FILTER_MAX, k):
                    return self._exact_subset(queries, k, allowed)
                scores, ids = self._faiss_search(queries, k, faiss.IDSelectorBatch(allowed), nprobe, ef)
                if (ids < 0).any():  # an approximate pass came back short: answer exactly instead
                    return self._exact_subset(queries, k, allowed)
                return scores, ids
            sel = None
            if self._dead:
                sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._dead, np.int64)))
            elif self._gpu_available():
                return self._gpu_search(queries, k, nprobe)
            return self._faiss_search(queries, k, sel, nprobe, ef)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """The distinct ids among `ids` that are in the index, sorted (binary search: no pass over the index)."""
        ids = np.unique(ids)
        have = self.ids()
        if len(have) == 0 or len(ids) == 0:
            return ids[:0]
        pos = np.minimum(np.searchsorted(have, ids), len(have) - 1)
        return ids[have[pos] == ids]

    def _faiss_search(self, queries, k, sel, nprobe, ef):
        with _threads_for(len(queries)):
            return self._faiss_search_inner(queries, k, sel, nprobe, ef)

    def _faiss_search_inner(self, queries, k, sel, nprobe, ef):
        kind = self.spec.kind
        if kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.index.nprobe)
        elif kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(ef or self._hnsw().efSearch, k))
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    def _exact_subset(self, queries, k, allowed):
        m = len(queries)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        if len(allowed) == 0:
            return scores, ids
        vecs = self.index.reconstruct_batch(allowed)
        sims = queries @ vecs.T
        kk = min(k, len(allowed))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((np.take(allowed, top), -top_scores), axis=1)  # score desc, then id asc
        top = np.take_along_axis(top, order, axis=1)
        scores[:, :kk] = np.take_along_axis(sims, top, axis=1)
        ids[:, :kk] = allowed[top]
        return scores, ids

    def _gpu_available(self) -> bool:
        return self.spec.kind in ("flat", "ivf") and not self._gpu_failed and _num_gpus() > 0

    def _gpu_search(self, queries, k, nprobe):
        if self._gpu is None or self._gpu_stale:
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self.index)
            except Exception as exc:  # e.g. out of GPU memory: keep serving from the CPU index
                log.warning("cannot copy the %s index to the GPU (%s); searching on the CPU", self.spec, exc)
                self._gpu_failed = True
                return self._faiss_search(queries, k, None, nprobe, None)
            self._gpu_stale = False
        if self.spec.kind == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(self._gpu, "nprobe", nprobe or self.index.nprobe)
        return self._gpu.search(queries, k)

    # ---- persistence ----------------------------------------------------------------------------------------

    def save(self, path: str, header: dict) -> None:
        """Write atomically: temp file in the same folder, fsync, rename, fsync the folder."""
        with self._lock:
            payload = faiss.serialize_index(self.index).tobytes()
            dead = np.fromiter(self._dead, np.int64).tobytes() if self._dead else b""
            meta = dict(header, format=FORMAT, spec=str(self.spec), dim=self.dim, watermark=self.watermark,
                        trained_n=self.trained_n, ntotal=self.ntotal, payload_len=len(payload), dead_len=len(dead),
                        crc32=zlib.crc32(dead, zlib.crc32(payload)))
            if self.spec.kind == "ivf":
                meta["nprobe"] = int(self.index.nprobe)
            elif self.spec.kind == "hnsw":
                meta["ef"] = int(self._hnsw().efSearch)
        blob = json.dumps(meta, sort_keys=True).encode()
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
                fh.write(payload)
                fh.write(dead)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def read_header(path: str) -> dict:
        with _open_index_file(path) as fh:
            return _read_header(fh, path)

    @classmethod
    def load(cls, path: str) -> tuple["VectorIndex", dict]:
        """(index, header). Raises IndexFileError when the file is missing pieces, corrupt or not ours
        (or not a regular file: a FIFO or a folder in its place is unreadable, not a reason to wait)."""
        try:
            with _open_index_file(path) as fh:
                meta = _read_header(fh, path)
                payload = fh.read(meta["payload_len"])
                dead = fh.read(meta["dead_len"])
        except OSError as exc:
            raise IndexFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        if len(payload) != meta["payload_len"] or len(dead) != meta["dead_len"]:
            raise IndexFileError(f"{path}: truncated")
        if zlib.crc32(dead, zlib.crc32(payload)) != meta["crc32"]:
            raise IndexFileError(f"{path}: checksum mismatch (corrupt)")
        try:
            spec = IndexSpec.parse(meta["spec"])
            index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except Exception as exc:  # faiss raises RuntimeError with C++ text
            raise IndexFileError(f"{path}: not a readable FAISS index ({exc})") from exc
        if index.d != meta["dim"]:
            raise IndexFileError(f"{path}: dim {index.d} != header dim {meta['dim']}")
        vi = cls(spec, meta["dim"], index, watermark=meta["watermark"], trained_n=meta.get("trained_n", 0),
                 dead=np.frombuffer(dead, dtype=np.int64))
        if spec.kind == "ivf" and "nprobe" in meta:
            vi.index.nprobe = meta["nprobe"]
        return vi, meta


def _open_index_file(path: str):
    """The index file opened for reading: non-blocking and regular files only (indexer/files.py)."""
    from indexer.files import open_regular_file
    from mmsearch.errors import MMSearchError

    try:
        fd = open_regular_file(path)
    except MMSearchError as exc:
        raise IndexFileError(str(exc)) from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _read_header(fh, path: str) -> dict:
    head = fh.read(len(MAGIC) + 8)
    if len(head) < len(MAGIC) + 8 or not head.startswith(MAGIC):
        raise IndexFileError(f"{path}: not an mmsearch index file")
    (n,) = struct.unpack("<Q", head[len(MAGIC):])
    if n > 1 << 20:
        raise IndexFileError(f"{path}: header length {n} is implausible")
    try:
        meta = json.loads(fh.read(n))
    except ValueError as exc:
        raise IndexFileError(f"{path}: header is not JSON") from exc
    needed = {"format", "spec", "dim", "watermark", "payload_len", "dead_len", "crc32"}
    if not isinstance(meta, dict) or not needed <= meta.keys():
        raise IndexFileError(f"{path}: header lacks {sorted(needed - set(meta or {}))}")
    if meta["format"] != FORMAT:
        raise IndexFileError(f"{path}: index format {meta['format']} (this version writes {FORMAT})")
    return meta


SINGLE_THREAD_BELOW = 8  # queries per call


@contextlib.contextmanager
def _threads_for(nq: int):
    """A handful of queries runs on the calling thread only. OpenMP's thread count is per calling thread, so
    concurrent server threads each search single-threaded; a busy machine otherwise makes every small
    search wait on spinning OpenMP teams (measured: 20x slower single-query flat search under load)."""
    if nq >= SINGLE_THREAD_BELOW:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return get() if get else 0
