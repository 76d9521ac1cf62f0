"""The CUDA paths: FAISS GPU copies of the indices (and their CPU fallback), encoders in fp16 / bf16 on a GPU.

The `gpu` tests need a CUDA GPU, a CUDA build of torch and faiss-gpu; elsewhere they are skipped with the
reason. The fallback test runs everywhere: it makes FAISS claim a GPU whose copy then fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import encoders
from images import mixed_batch


def _gpu_reason() -> str | None:
    import faiss
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    if getattr(faiss, "get_num_gpus", lambda: 0)() == 0:
        return "FAISS has no GPU support here (pip install -e '.[gpu]' for faiss-gpu-cu12)"
    return None


needs_gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")


def _collection(tmp_path, n: int = 3000, dim: int = 64, spec: str = "flat"):
    from indexer.store import Store, UpsertRow
    from indexer_helpers import FakeBinding, clustered

    store = Store.open(tmp_path / "data")
    handle = store.create_collection("g", FakeBinding(dim=dim), spec)
    vecs = clustered(n, dim)
    handle.upsert([UpsertRow(uri=f"u{i}", sha256=f"{i:064x}", width=1, height=1, vector=vecs[i]) for i in range(n)])
    return store, handle, vecs


def _exact(vecs: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    scores = queries @ vecs.T
    return [[int(ids[j]) for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("spec", ["flat", "ivf64"])
def test_faiss_gpu_copy_answers_like_the_cpu_index(tmp_path, spec):
    store, handle, vecs = _collection(tmp_path, spec=spec)
    try:
        ids = np.asarray(sorted(handle.get(range(1, 4000), with_vectors=False)), dtype=np.int64)
        queries = vecs[:20] + 0.01
        got = [[h.id for h in hits] for hits in handle.search(queries, 10, nprobe=64)]
        assert got == _exact(vecs, ids, queries / np.linalg.norm(queries, axis=1, keepdims=True), 10)
        handle.delete(ids=[got[0][0]])  # the GPU copy is refreshed after a write
        again = [h.id for h in handle.search(queries[:1], 10, nprobe=64)[0]]
        assert got[0][0] not in again and again[:9] == got[0][1:10]
    finally:
        store.close()


def test_a_failing_gpu_copy_falls_back_to_the_cpu_index(tmp_path, monkeypatch, caplog):
    import faiss

    store, handle, vecs = _collection(tmp_path, n=500)
    try:
        want = [h.id for h in handle.search(vecs[:1], 5)[0]]
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)

        def no_room(*_args, **_kwargs):
            raise RuntimeError("out of GPU memory (simulated)")

        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", no_room, raising=False)
        handle.delete(ids=[want[-1]])  # a write, so a fresh GPU copy is wanted
        with caplog.at_level("WARNING"):
            got = [h.id for h in handle.search(vecs[:1], 4)[0]]
        assert got == want[:4]
        assert "searching on the CPU" in caplog.text
    finally:
        store.close()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_encoders_run_in_half_precision_on_cuda(tiny_siglip_dir, dtype):
    cpu = encoders.load(tiny_siglip_dir)
    gpu = encoders.load(tiny_siglip_dir, device="cuda", dtype=dtype)
    images, texts = mixed_batch(), ["a red circle", "两只蓝色的正方形"]
    for a, b in ((cpu.encode_images(images), gpu.encode_images(images)),
                 (cpu.encode_texts(texts), gpu.encode_texts(texts))):
        assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-3)
        assert (a * b).sum(axis=1).min() > 0.99
