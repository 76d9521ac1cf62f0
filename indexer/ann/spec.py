"""Index specs: the user-facing string ("auto", "ivf1024", "ivfpq", "OPQ16,IVF1024,PQ16", ...), and how `auto`
turns a collection size and a memory budget into a concrete kind (see indexer/ann/__init__.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mmsearch.errors import InvalidInput

AUTO_FLAT_MAX = 50_000  # auto: exact search below this many items (when it fits the budget)
DEFAULT_INDEX_MEMORY = 4 << 30  # bytes an index may take when neither the collection nor the server says
KINDS = ("auto", "flat", "ivf", "ivfsq8", "ivfsq16", "ivfpq", "hnsw", "hnswsq8")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_HELP = ("use auto, flat, ivf[N], ivfsq8[-N], ivfsq16[-N], ivfpq[-N[xM]], hnsw[M], hnswsq8[-M] "
         "or a FAISS factory string (IVF1024,SQ8 | IVF1024,SQfp16 | OPQ16,IVF1024,PQ16 | HNSW32_SQ8)")


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # one of KINDS
    param: int | None = None  # ivf*: nlist; hnsw*: M
    m: int | None = None  # ivfpq: PQ sub-quantizers (bytes per vector); OPQ rotates to the same m

    @classmethod
    def parse(cls, text: str | None) -> "IndexSpec":
        s = (text or "auto").strip().lower().replace(" ", "")
        spec = _parse_factory(s) or _parse_short(s)
        if spec is None:
            raise InvalidInput(f"index spec {text!r}: {_HELP}")
        if spec.param is not None:
            ivf = spec.kind.startswith("ivf")
            if ivf and not 1 <= spec.param <= 1 << 20 or not ivf and not 4 <= spec.param <= 256:
                raise InvalidInput(f"index spec {text!r}: nlist must be 1..1048576, HNSW M 4..256")
        if spec.m is not None and not 1 <= spec.m <= 1024:
            raise InvalidInput(f"index spec {text!r}: PQ m must be 1..1024")
        return spec

    def __str__(self) -> str:
        if self.kind in ("flat", "auto", "ivf", "hnsw"):
            return self.kind + (str(self.param) if self.param else "")
        text = self.kind + (f"-{self.param}" if self.param else "")
        return text + (f"x{self.m}" if self.m else "")

    @property
    def compressed(self) -> bool:
        return self.kind in ("ivfsq8", "ivfsq16", "ivfpq", "hnswsq8")

    def resolve(self, n: int, dim: int = 768, memory: int | None = None) -> "IndexSpec":
        """The concrete spec for a collection of n items of `dim` floats under a `memory` budget (bytes)."""
        if self.kind == "auto":
            return choose_auto(n, dim, DEFAULT_INDEX_MEMORY if memory is None else memory)
        if self.kind.startswith("ivf") and self.param is None:
            return IndexSpec(self.kind, default_nlist(n), self.m if self.kind != "ivfpq" else self.m or default_pq_m(dim))
        if self.kind == "ivfpq" and self.m is None:
            return IndexSpec(self.kind, self.param, default_pq_m(dim))
        if self.kind.startswith("hnsw") and self.param is None:
            return IndexSpec(self.kind, 32)
        return self


def _parse_short(s: str) -> IndexSpec | None:
    m = re.fullmatch(r"(auto|flat|ivf|hnsw)(\d+)?", s)
    if m:
        if m.group(2) and m.group(1) in ("auto", "flat"):
            return None
        return IndexSpec(m.group(1), int(m.group(2)) if m.group(2) else None)
    m = re.fullmatch(r"(ivfsq8|ivfsq16|ivffp16|hnswsq8)(?:-(\d+))?", s)
    if m:
        return IndexSpec("ivfsq16" if m.group(1) == "ivffp16" else m.group(1), int(m.group(2)) if m.group(2) else None)
    m = re.fullmatch(r"ivfpq(?:-(\d+)(?:x(\d+))?)?", s)
    if m:
        return IndexSpec("ivfpq", int(m.group(1)) if m.group(1) else None, int(m.group(2)) if m.group(2) else None)
    return None


def _parse_factory(s: str) -> IndexSpec | None:
    """The FAISS index_factory spellings of the kinds (what autofaiss prints)."""
    m = re.fullmatch(r"ivf(\d+),(sq8|sqfp16|flat)", s)
    if m:
        return IndexSpec({"sq8": "ivfsq8", "sqfp16": "ivfsq16", "flat": "ivf"}[m.group(2)], int(m.group(1)))
    m = re.fullmatch(r"opq(\d+)(?:_\d+)?,ivf(\d+),pq(\d+)(?:x8)?", s)
    if m and m.group(1) == m.group(3):
        return IndexSpec("ivfpq", int(m.group(2)), int(m.group(3)))
    m = re.fullmatch(r"hnsw(\d+)_sq8", s)
    if m:
        return IndexSpec("hnswsq8", int(m.group(1)))
    return None


def default_nlist(n: int) -> int:
    # 4..16 * sqrt(n) is the usual range; at the low end the coarse quantizer stays cheap at 10^5-10^6 items
    # (bench/ann.py). k-means wants >= 39 training points per list.
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39)))


def default_nprobe(nlist: int) -> int:
    # nlist/48 (bench/ann.py: recall@10 0.97 at 200k); at least 16 lists, or small collections probe 1-4 lists
    return max(1, min(nlist, max(16, round(nlist / 48))))


def default_pq_m(dim: int, most: int = 96) -> int:
    """Sub-quantizers for PQ: the largest divisor of dim with >= 4 dims per sub-vector, at most `most`
    (768-d -> 96 bytes per vector, 32x smaller than float32)."""
    return max(m for m in range(1, max(1, min(most, dim // 4)) + 1) if dim % m == 0)


def parse_memory(text: str | int | None) -> int | None:
    """'4GB', '512MiB', '2g', 1073741824 -> bytes (binary units); None stays None."""
    if text is None or isinstance(text, int):
        if isinstance(text, int) and text <= 0:
            raise InvalidInput(f"index memory must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise InvalidInput(f"index memory {text!r}: use a size like 4GB, 512MB or 1073741824")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


# ---- auto ---------------------------------------------------------------------------------------------------

_ID_BYTES = 8 + 16  # an int64 id in the inverted list + its slot in the id -> list hash table


def estimate_bytes(spec: IndexSpec, n: int, dim: int) -> int:
    """RAM a concrete index of n vectors takes (codes + ids + fixed parts), close enough to choose by."""
    if spec.kind == "flat":
        return n * (4 * dim + 8)
    if spec.kind == "hnsw" or spec.kind == "hnswsq8":
        code = 4 * dim if spec.kind == "hnsw" else dim
        return n * (code + 8 + 2 * 4 * (spec.param or 32) + 8)  # codes, id map, level-0 + upper links
    nlist = spec.param or default_nlist(n)
    fixed = nlist * dim * 4
    code = {"ivf": 4 * dim, "ivfsq16": 2 * dim, "ivfsq8": dim}.get(spec.kind)
    if code is None:  # ivfpq: m bytes + the OPQ rotation + codebooks
        code = spec.m or default_pq_m(dim)
        fixed += dim * dim * 4 + 256 * dim * 4
    return fixed + n * (code + _ID_BYTES)


def choose_auto(n: int, dim: int, memory: int) -> IndexSpec:
    """flat while small and it fits; else the first of ivf, ivfsq8, ivfpq (m from 96 bytes down) that fits
    the budget; nothing fits: the smallest ivfpq."""
    nlist = default_nlist(n)
    if n < AUTO_FLAT_MAX and estimate_bytes(IndexSpec("flat"), n, dim) <= memory:
        return IndexSpec("flat")
    for kind in ("ivf", "ivfsq8"):
        spec = IndexSpec(kind, nlist)
        if estimate_bytes(spec, n, dim) <= memory:
            return spec
    ms = sorted({m for m in range(1, default_pq_m(dim) + 1) if dim % m == 0 and dim // m >= 4} or {1}, reverse=True)
    for m in ms:
        spec = IndexSpec("ivfpq", nlist, m)
        if estimate_bytes(spec, n, dim) <= memory:
            return spec
    return IndexSpec("ivfpq", nlist, ms[-1])
