"""What every index kind shares: the id bookkeeping, filtered search, the exact re-ranking of compressed
shortlists, the GPU copy, and persistence (a header file plus a FAISS payload file, memory-mapped on open)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from mmsearch.errors import InvalidInput
from indexer.ann.spec import IndexSpec

# faiss's loader reports at INFO which CPU build it tried ("Could not load library with AVX512 support"),
# noise in every server log; its warnings still show.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

log = logging.getLogger("mmsearch.indexer")

MAGIC = b"MMSEARCH-FAISS\n"
FORMAT = 2  # 1 held the payload inline; such files are unreadable now and rebuilt from the catalog
EXACT_FILTER_MAX = 20_000  # allowed-id sets up to this size are scored exactly (flat, hnsw: contiguous vectors)
EXACT_FETCH_MAX = 512  # ... for compressed kinds, whose exact vectors come from the vector source (the catalog:
                       # 1M items, 16 ms a thousand, where a pass re-ranks only k * refine)
MASK_SPARSITY = 16  # the membership mask (one byte per id up to the largest) is kept while ids are this dense
SINGLE_THREAD_BELOW = 8  # queries per call

# (ids) -> (ids found, their float32 vectors): where compressed kinds read the exact vectors they re-rank with
VectorSource = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class IndexFileError(Exception):
    """An index file that cannot be used (unreadable, corrupt, foreign); the caller rebuilds it."""


class VectorIndex:
    """A FAISS index over (item id, vector) pairs of one collection plus the catalog watermark it covers.
    One subclass per kind (indexer/ann/flat.py, ivf.py, hnsw.py); `VectorIndex.empty(spec, ...)` and
    `VectorIndex.load(path)` pick it."""

    kind: ClassVar[str] = ""
    kinds: ClassVar[dict[str, type["VectorIndex"]]] = {}
    gpu_copy: ClassVar[bool] = False  # searched on a GPU copy when FAISS sees GPUs
    refine: ClassVar[int] = 0  # compressed kinds: shortlist k * refine, re-ranked exactly
    trained: ClassVar[bool] = False  # `create` needs a training sample

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        for kind in getattr(cls, "serves", (cls.kind,)):
            if kind:
                VectorIndex.kinds[kind] = cls

    def __init__(self, spec: IndexSpec, dim: int, index: faiss.Index, *, watermark: int = 0,
                 trained_n: int = 0, dead: np.ndarray | None = None):
        self.spec, self.dim, self.index = spec, dim, index
        self.watermark = watermark
        self.trained_n = trained_n  # collection size the quantizer was trained for
        self.vector_source: VectorSource | None = None
        self.mapped_from: str | None = None  # payload file this index is memory-mapped from (read-only)
        self._dead: set[int] = set(int(i) for i in (dead if dead is not None else ()))
        self._ids_cache: np.ndarray | None = None
        self._mask_cache: np.ndarray | None = None  # mask[id]: id is in the index (tombstones excluded)
        self._gpu = None
        self._gpu_stale = True
        self._gpu_failed = False
        self._lock = threading.RLock()

    # ---- construction --------------------------------------------------------------------------------------

    @classmethod
    def empty(cls, spec: IndexSpec, dim: int, training: np.ndarray | None = None, *, n_hint: int = 0,
              memory: int | None = None) -> "VectorIndex":
        """A new empty index. Trained kinds (ivf*) need `training` vectors (their quantizers are fit on them)."""
        n = max(n_hint, 0 if training is None else len(training))
        spec = spec.resolve(n, dim, memory)
        kind_cls = VectorIndex.kinds[spec.kind]
        return kind_cls.create(spec, dim, training, n)

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, training: np.ndarray | None, n: int) -> "VectorIndex":
        raise NotImplementedError

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self._dead)

    @property
    def compressed(self) -> bool:
        return self.refine > 0

    def ids(self) -> np.ndarray:
        """Sorted item ids present in the index (tombstones excluded)."""
        with self._lock:
            if self._ids_cache is None:
                ids = self._stored_ids()
                if self._dead:
                    ids = ids[~np.isin(ids, np.fromiter(self._dead, np.int64))]
                self._ids_cache = np.sort(ids)
            return self._ids_cache

    def _member_mask(self) -> np.ndarray | None:
        """A boolean array indexed by item id: which ids the index holds; None when the ids are too sparse for
        one (catalog ids are dense). Lookups in it cost a gather, not the binary search of `ids()`."""
        with self._lock:
            if self._mask_cache is None:
                have = self.ids()
                top = int(have[-1]) + 1 if len(have) else 0
                if len(have) and (have[0] < 0 or top > MASK_SPARSITY * len(have) + (1 << 20)):
                    return None
                mask = np.zeros(top, dtype=bool)
                mask[have] = True
                self._mask_cache = mask
            return self._mask_cache

    def _stored_ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def tuning(self) -> dict:
        """Search settings saved in the header (nprobe, ef)."""
        return {}

    def tune(self, meta: dict) -> None:
        pass

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
            self._writable()
            present = self._present(ids)
            self._add(ids, vectors, present)
            self._changed(added=np.setdiff1d(ids, present))

    def _add(self, ids: np.ndarray, vectors: np.ndarray, present: np.ndarray) -> None:
        if len(present):
            self._remove_ids(present)
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove item ids (absent ones are ignored); returns how many were present."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        with self._lock:
            ids = self._present(ids)
            if len(ids) == 0:
                return 0
            self._writable()
            self._remove(ids)
            self._changed(removed=ids)
            return len(ids)

    def _remove(self, ids: np.ndarray) -> None:
        self._remove_ids(ids)

    def _remove_ids(self, ids: np.ndarray) -> None:
        self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def _changed(self, *, added: np.ndarray | None = None, removed: np.ndarray | None = None) -> None:
        """After a write of `added` ids (new to the index; sorted, distinct) or a removal of `removed` ones
        (present; sorted, distinct): the id caches follow in place, so the next filtered search does not
        list the whole index again (1M ids: a walk of every list and a sort)."""
        self._gpu_stale = True
        have, mask = self._ids_cache, self._mask_cache
        if have is None:
            return
        if added is not None and len(added):
            self._ids_cache = np.insert(have, np.searchsorted(have, added), added)
            if mask is not None:
                if added[-1] >= len(mask):
                    if added[-1] + 1 > MASK_SPARSITY * len(self._ids_cache) + (1 << 20):
                        self._mask_cache = None  # rebuilt (or refused) on next use
                        return
                    mask = self._mask_cache = np.concatenate([mask, np.zeros(int(added[-1]) + 1 - len(mask), bool)])
                mask[added] = True
        if removed is not None and len(removed):
            self._ids_cache = np.delete(have, np.searchsorted(have, removed))
            if mask is not None:
                mask[removed] = False

    def _writable(self) -> None:
        """A memory-mapped index is read-only (FAISS aborts the process on a write to a mapped vector): read
        the payload into memory before the first write."""
        if self.mapped_from is None:
            return
        self._own_payload()
        self.mapped_from = None
        self.tune(self._tuned)

    def _own_payload(self) -> None:
        """An owned copy of the mapped index. FAISS copies (clone_index) keep viewing the mapping, so this
        goes through a serialized copy: the whole index twice in memory for a moment (flat and hnsw*, which
        `auto` keeps small; ivf* copy their lists instead, ivf.py)."""
        self.index = faiss.deserialize_index(faiss.serialize_index(self.index))

    # ---- search ---------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               nprobe: int | None = None, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (m, k) float32, ids (m, k) int64), missing slots are id -1.
        `allowed` restricts results to those item ids; `nprobe` (ivf*) and `ef` (hnsw*) trade speed for recall."""
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
                return self._filtered(queries, k, np.asarray(allowed, dtype=np.int64), nprobe, ef)
            sel = None
            if self._dead:
                sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._dead, np.int64)))
            elif self._gpu_available():
                return self._gpu_search(queries, k, nprobe)
            return self._shortlist(queries, k, sel, nprobe, ef)

    def _filtered(self, queries, k, allowed, nprobe, ef):
        """Top-k among `allowed` ids, by the share of the index they make up: a small set is scored exactly
        (`_exact_max`); a larger one by a FAISS pass under a bitmap of the allowed ids, searched wider the
        rarer they are (`_filtered_effort`: ivf* probe nprobe / share lists, at most all of them, where the
        scan is exhaustive), and exhaustively (`_exhaustive`) when that pass comes back short."""
        allowed = self._members(allowed)
        if len(allowed) <= max(self._exact_max(k), k):
            return self._exact_subset(queries, k, np.unique(allowed))
        # a bitmap spans 0..max(id): for ids too sparse for the membership mask, a hashed set instead
        sel = _bitmap_selector(allowed) if self._member_mask() is not None else faiss.IDSelectorBatch(allowed)
        share = min(1.0, len(allowed) / max(self.ntotal, 1))
        scores, ids = self._shortlist(queries, k, sel, *self._filtered_effort(share, k, nprobe, ef))
        if (ids < 0).any():  # the pass came back short: answer exhaustively instead
            return self._exhaustive(queries, k, sel, allowed)
        return scores, ids

    def _exact_max(self, k: int) -> int:
        """Allowed sets up to this size are scored exactly: gathering their vectors costs less than a pass."""
        return EXACT_FETCH_MAX if self.compressed and self.vector_source else EXACT_FILTER_MAX

    def _filtered_effort(self, share: float, k: int, nprobe, ef) -> tuple:
        """(nprobe, ef) for a pass restricted to `share` (0..1] of the index."""
        return nprobe, ef

    def _exhaustive(self, queries, k, sel, allowed):
        return self._exact_subset(queries, k, np.unique(allowed))

    def _members(self, ids: np.ndarray) -> np.ndarray:
        """The ids among `ids` that are in the index (tombstones excluded), in the given order, repeats kept."""
        mask = self._member_mask()
        if mask is None:
            have = self.ids()
            if len(have) == 0:
                return ids[:0]
            pos = np.minimum(np.searchsorted(have, ids), len(have) - 1)
            return ids[have[pos] == ids]
        ids = ids[(ids >= 0) & (ids < len(mask))]
        return ids[mask[ids]]

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """The distinct ids among `ids` that are in the index, sorted (no pass over the index)."""
        return np.unique(self._members(np.asarray(ids, dtype=np.int64)))

    def _shortlist(self, queries, k, sel, nprobe, ef):
        """FAISS top-k; compressed kinds fetch k * refine candidates and re-rank them exactly."""
        if not self.compressed or self.vector_source is None:
            return self._faiss_search(queries, k, sel, nprobe, ef)
        wide = min(max(k * self.refine, k), max(self.ntotal, k))
        _, cand = self._faiss_search(queries, wide, sel, nprobe, ef)
        return self._rerank(queries, k, cand)

    def _rerank(self, queries, k, cand):
        m = len(queries)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        uniq = np.unique(cand[cand >= 0])
        found, vecs = self.vector_source(uniq)
        if len(found) == 0:
            return scores, ids
        order = np.argsort(found)
        found, vecs = found[order], vecs[order]
        for row in range(m):
            c = cand[row][cand[row] >= 0]
            pos = np.searchsorted(found, c)
            ok = (pos < len(found)) & (found[np.minimum(pos, len(found) - 1)] == c)  # deleted meanwhile: gone
            c, pos = c[ok], pos[ok]
            sims = vecs[pos] @ queries[row]
            top = np.lexsort((c, -sims))[:k]
            scores[row, :len(top)], ids[row, :len(top)] = sims[top], c[top]
        return scores, ids

    def _faiss_search(self, queries, k, sel, nprobe, ef):
        with _threads_for(len(queries)):
            params = self._search_params(k, nprobe, ef)
            if sel is not None:
                self._set_selector(params, sel)
            return self.index.search(queries, k, params=params)

    def _search_params(self, k, nprobe, ef):
        return faiss.SearchParameters()

    def _set_selector(self, params, sel) -> None:
        params.sel = sel

    def _exact_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float vectors) for scoring a small allowed set exactly."""
        if self.compressed and self.vector_source is not None:
            return self.vector_source(ids)
        return ids, self.index.reconstruct_batch(ids)

    def _exact_subset(self, queries, k, allowed):
        m = len(queries)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        if len(allowed) == 0:
            return scores, ids
        allowed, vecs = self._exact_vectors(allowed)
        if len(allowed) == 0:
            return scores, ids
        sims = queries @ vecs.T
        kk = min(k, len(allowed))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((np.take(allowed, top), -top_scores), axis=1)  # score desc, then id asc
        top = np.take_along_axis(top, order, axis=1)
        scores[:, :kk] = np.take_along_axis(sims, top, axis=1)
        ids[:, :kk] = allowed[top]
        return scores, ids

    # ---- the GPU copy ---------------------------------------------------------------------------------------

    def _gpu_available(self) -> bool:
        return self.gpu_copy and not self._gpu_failed and _num_gpus() > 0

    def _gpu_search(self, queries, k, nprobe):
        if self._gpu is None or self._gpu_stale:
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self.index)
            except Exception as exc:  # e.g. out of GPU memory: keep serving from the CPU index
                log.warning("cannot copy the %s index to the GPU (%s); searching on the CPU", self.spec, exc)
                self._gpu_failed = True
                return self._faiss_search(queries, k, None, nprobe, None)
            self._gpu_stale = False
        self._tune_gpu(self._gpu, nprobe)
        return self._gpu.search(queries, k)

    def _tune_gpu(self, gpu_index, nprobe) -> None:
        pass

    # ---- persistence ----------------------------------------------------------------------------------------

    def extra_bytes(self) -> bytes:
        """Kind-specific state saved after the header (hnsw*: tombstone ids)."""
        return np.fromiter(self._dead, np.int64).tobytes() if self._dead else b""

    def save(self, path: str, header: dict) -> None:
        """Write atomically and crash-safe: the FAISS payload goes to a new file PATH.<token>.payload
        (written, fsynced), then the header file PATH (magic, JSON header naming the payload, its length and
        CRC, the tombstones) replaces the old one by rename, the folder is fsynced, and the payload the old
        header named is removed. A crash leaves the old pair or the new pair, never a mix."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with self._lock:
            old_payload = _payload_named(path)
            payload_name = f"{os.path.basename(path)}.{secrets.token_hex(6)}.payload"
            payload_path = os.path.join(folder, payload_name)
            crc, length = _write_atomic(payload_path, lambda fh: _write_faiss(fh, self.index))
            dead = self.extra_bytes()
            meta = dict(header, format=FORMAT, spec=str(self.spec), dim=self.dim, watermark=self.watermark,
                        trained_n=self.trained_n, ntotal=self.ntotal, payload=payload_name, payload_len=length,
                        payload_crc32=crc, dead_len=len(dead), crc32=zlib.crc32(dead), **self.tuning())
        blob = json.dumps(meta, sort_keys=True).encode()
        try:
            _write_atomic(path, lambda fh: fh.write(MAGIC + struct.pack("<Q", len(blob)) + blob + dead))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(payload_path)
            raise
        _fsync_dir(folder)
        if old_payload and old_payload != payload_name:
            with contextlib.suppress(OSError):  # a reader that mapped it keeps its pages (unlinked inode)
                os.unlink(os.path.join(folder, old_payload))

    @staticmethod
    def read_header(path: str) -> dict:
        with _open_index_file(path) as fh:
            return _read_header(fh, path)

    @classmethod
    def load(cls, path: str, *, mmap: bool = True) -> tuple["VectorIndex", dict]:
        """(index, header). The payload is memory-mapped (FAISS IO_FLAG_MMAP_IFC) unless `mmap` is False, so
        opening reads the header and checks the payload's CRC without holding it in memory. Raises
        IndexFileError when the file or its payload is missing pieces, corrupt or not ours (or not a regular
        file: a FIFO or a folder in its place is unreadable, not a reason to wait)."""
        try:
            with _open_index_file(path) as fh:
                meta = _read_header(fh, path)
                dead = fh.read(meta["dead_len"])
        except OSError as exc:
            raise IndexFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        if len(dead) != meta["dead_len"]:
            raise IndexFileError(f"{path}: truncated")
        if zlib.crc32(dead) != meta["crc32"]:
            raise IndexFileError(f"{path}: checksum mismatch (corrupt)")
        payload = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.basename(str(meta["payload"])))
        _check_payload(payload, meta["payload_len"], meta["payload_crc32"])
        try:
            spec = IndexSpec.parse(meta["spec"])
            kind_cls = VectorIndex.kinds[spec.kind]
        except Exception as exc:
            raise IndexFileError(f"{path}: unknown index spec {meta['spec']!r}") from exc
        index = _read_payload(payload, mmap=mmap)
        if index.d != meta["dim"]:
            raise IndexFileError(f"{path}: dim {index.d} != header dim {meta['dim']}")
        vi = kind_cls(spec, meta["dim"], index, watermark=meta["watermark"], trained_n=meta.get("trained_n", 0),
                      dead=np.frombuffer(dead, dtype=np.int64))
        vi._tuned = meta
        vi.tune(meta)
        if mmap:
            vi.mapped_from = payload
        return vi, meta

    _tuned: dict = {}


def payload_files(path: str) -> list[str]:
    """Every payload file beside the index file `path` (referenced or left by a killed save)."""
    folder, base = os.path.split(os.path.abspath(path))
    try:
        return [os.path.join(folder, n) for n in os.listdir(folder)
                if n.startswith(base + ".") and n.endswith(".payload")]
    except OSError:
        return []


def _payload_named(path: str) -> str | None:
    try:
        return str(VectorIndex.read_header(path)["payload"])
    except (IndexFileError, OSError, KeyError):
        return None


def _write_faiss(fh, index) -> None:
    fh.write(faiss.serialize_index(index).tobytes())


def _write_atomic(path: str, write) -> tuple[int, int]:
    """Write through `write(fh)` to a temp file beside `path`, fsync, rename over it; (crc32, length)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return _crc_of(path)


def _crc_of(path: str) -> tuple[int, int]:
    crc, length = 0, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            crc, length = zlib.crc32(chunk, crc), length + len(chunk)
    return crc, length


def _check_payload(path: str, length: int, crc: int) -> None:
    from indexer.files import open_regular_file
    from mmsearch.errors import MMSearchError

    try:
        os.close(open_regular_file(path))
        got_crc, got_len = _crc_of(path)
    except MMSearchError as exc:
        raise IndexFileError(str(exc)) from None
    except OSError as exc:
        raise IndexFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if got_len != length:
        raise IndexFileError(f"{path}: truncated ({got_len} of {length} bytes)")
    if got_crc != crc:
        raise IndexFileError(f"{path}: checksum mismatch (corrupt)")


def _read_payload(path: str, *, mmap: bool):
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except Exception as exc:  # faiss raises RuntimeError with C++ text
        raise IndexFileError(f"{path}: not a readable FAISS index ({exc})") from exc


def _fsync_dir(folder: str) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    raw = fh.read(n)
    if len(raw) != n:
        raise IndexFileError(f"{path}: truncated")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise IndexFileError(f"{path}: header is not JSON") from exc
    if not isinstance(meta, dict):
        raise IndexFileError(f"{path}: header is not an object")
    if meta.get("format") != FORMAT:
        raise IndexFileError(f"{path}: index format {meta.get('format')} (this version reads {FORMAT})")
    needed = {"spec", "dim", "watermark", "payload", "payload_len", "payload_crc32", "dead_len", "crc32"}
    if not needed <= meta.keys():
        raise IndexFileError(f"{path}: header lacks {sorted(needed - set(meta))}")
    return meta


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


def _bitmap_selector(ids: np.ndarray):
    """A FAISS selector of the (non-negative) `ids`: a bitmap over 0..max(ids), one load per test, where
    IDSelectorBatch hashes every id into a set first (measured at 1M items, 100k ids: 0.2 ms to build
    against 10 ms, and 37 ms against 103 ms for an exhaustive IVF pass)."""
    bits = np.zeros(int(ids.max()) + 1, dtype=bool)
    bits[ids] = True
    packed = np.packbits(bits, bitorder="little")  # FAISS reads bit (id & 7) of byte id >> 3
    sel = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
    sel.bitmap_array = packed  # FAISS keeps a bare pointer: the array lives as long as the selector
    return sel


def _num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return get() if get else 0
