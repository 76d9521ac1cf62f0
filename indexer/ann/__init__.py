"""One FAISS index per collection, one class per kind behind one interface (indexer/ann/base.py: VectorIndex).

Index ids are catalog item ids (int64); vectors are L2-normalised and compared by inner product.
Kinds (spec strings in brackets; FAISS factory spellings are accepted too):

  flat     ["flat"]                 exact (flat.py)
  ivf      ["ivf" | "ivf<N>"]        IVF-Flat, nlist about 4*sqrt(n); `nprobe` per query (ivf.py)
  ivfsq8   ["ivfsq8[-N]" | "IVFN,SQ8"]        IVF over 8-bit scalar quantization, 4x smaller (ivf.py)
  ivfsq16  ["ivfsq16[-N]" | "IVFN,SQfp16"]    IVF over fp16, 2x smaller (ivf.py)
  ivfpq    ["ivfpq[-N[xM]]" | "OPQM,IVFN,PQM"]  OPQ rotation + IVF + PQ, M bytes a vector (ivf.py)
  hnsw     ["hnsw" | "hnsw<M>"]      HNSW graph over floats; `ef` per query (hnsw.py)
  hnswsq8  ["hnswsq8[-M]" | "HNSWM_SQ8"]      HNSW over 8-bit codes (hnsw.py)
  auto     ["auto"]                 chosen from the collection size and the memory budget (below)

Compressed kinds (ivfsq8, ivfsq16, ivfpq, hnswsq8) hold codes, not floats: a search takes a shortlist of
k * refine candidates from FAISS and re-ranks it exactly against the stored float vectors, which the
index's `vector_source` reads by id (the store wires it to the catalog's item_vectors table, primary-key
lookups), so the float vectors are never in RAM. Refine factors: sq16 2, sq8 4, pq 10.

How `auto` chooses (indexer/ann/spec.py: choose_auto), like autofaiss: with n items of dim d and a memory
budget B (bytes; `--index-memory`, TOML `index_memory`, default 4 GiB), estimate each kind's RAM
(estimate_bytes: codes + ids + quantizers) and take the first that fits:
  flat     when n < 50,000 (AUTO_FLAT_MAX) and n * (4d + 8) <= B
  ivf      IVF-Flat, n * (4d + 24) + centroids <= B
  ivfsq8   n * (d + 24) + centroids <= B
  ivfpq    OPQ + PQ with the largest m (<= 96, d/m >= 4) that fits; the smallest m when nothing fits.
The store re-chooses after every write (bulk job end, Upsert, Delete) and rebuilds in the background
when the choice changed (or an IVF quantizer was trained on 4x fewer items), swapping the new index in
atomically while searches use the old one.

A restriction to a set of allowed ids (a metadata filter) is answered by the share of the index it makes
up (base.py: _filtered): a small set is scored exactly (flat, hnsw: up to 20,000 ids, their vectors are
contiguous; ivf: 1,024, vectors come through the direct map one by one; compressed kinds: k * refine for
ivf*, 512 for hnswsq8, the vectors come from the catalog); a larger one by a FAISS pass under a bitmap of
the ids (IDSelectorBitmap), widened by 1 / share: ivf* probe nprobe / share lists, all of them (an
exhaustive scan of the allowed ids, exact for ivf) once the share is below nprobe / nlist; hnsw* walk
with ef / share (at most 4,096). A pass that comes back short is answered exhaustively, so the caller
gets a full top-k when at least k ids are allowed.

When FAISS sees GPUs, flat and ivf searches without a restriction run on a GPU copy; writes go to the
CPU index and mark the copy stale, and it is re-cloned before the next search.

Persistence (base.py: save / load): a header file PATH (magic line, JSON header: collection id + uid,
encoder digest, dim, spec, the catalog watermark it covers, the payload file's name, length and CRC,
tombstone ids and their CRC) and the FAISS payload in PATH.<token>.payload, a file of its own so FAISS
can memory-map it (IO_FLAG_MMAP_IFC): opening reads the header and checks the payload CRC, the codes stay
in the page cache, and RSS follows what searches touch. A mapped index is read-only; the first write reads
it into memory. `save` writes the new payload, then replaces the header by rename (fsync both and the
folder), then deletes the old payload: a crash leaves the old pair or the new pair.
"""

from indexer.ann.base import EXACT_FETCH_MAX, EXACT_FILTER_MAX, IndexFileError, VectorIndex, payload_files
from indexer.ann.spec import (AUTO_FLAT_MAX, DEFAULT_INDEX_MEMORY, IndexSpec, choose_auto, default_nlist,
                              default_nprobe, estimate_bytes, parse_memory)
from indexer.ann import flat, hnsw, ivf  # noqa: F401  (register the kinds)

import numpy as np
import faiss


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


__all__ = ["AUTO_FLAT_MAX", "DEFAULT_INDEX_MEMORY", "EXACT_FETCH_MAX", "EXACT_FILTER_MAX", "IndexFileError",
           "IndexSpec", "VectorIndex", "choose_auto", "default_nlist", "default_nprobe", "estimate_bytes",
           "normalize_rows", "parse_memory", "payload_files"]
