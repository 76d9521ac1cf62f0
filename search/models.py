"""The models a process serves: dual encoders, rerankers, captioners by name, each loaded once and shared.

    models = Models(batching=True, allow=["path/to/blip-itm"], max_models=8)
    enc = models.for_collection(handle)     # the collection's own encoder: always allowed
    rr = models.reranker("path/to/blip-itm")
    models.reranker("/etc")                 # NotFound: not a model this server serves

The same name may be loaded as several kinds (a BLIP retrieval checkpoint as dual encoder and reranker).
Which models a request may name: `allow=None` means any name the process can load (the CLI on the
operator's own machine); a server passes the names it serves (its `allow_models` and `preload`), and the
collections' own encoders are always allowed. Anything else is NotFound before a file is looked at, so a
client cannot make the server read an arbitrary directory or try a hub download.

At most `max_models` stay loaded: loading one more evicts the least recently used (preloaded ones stay).
An evicted dual encoder's batcher is retired, so a request still holding it finishes on direct calls.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
from typing import Any, Callable, Sequence

from mmsearch.errors import InvalidInput, NotFound
from search.batching import BatchedEncoder

log = logging.getLogger("mmsearch.models")


class Models:
    def __init__(self, *, batching: bool = True, max_batch: int = 32, max_wait_ms: float = 2.0,
                 device: str = "cpu", dtype: str | None = None, allow: Sequence[str] | None = None,
                 max_models: int = 8, on_batch: Callable[[str, str, int, float], None] | None = None):
        self.batching, self.max_batch, self.max_wait_ms = batching, max_batch, max_wait_ms
        self.on_batch = on_batch  # batching.BatchedEncoder's hook (metrics)
        self.device, self.dtype = device, dtype
        self.allow = None if allow is None else set(allow)
        self.max_models = max_models
        self._cache: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()  # LRU order
        self._pinned: set[tuple[str, str]] = set()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0  # statistics: how many times a model was loaded

    def _get(self, kind: str, name: str, loader: Callable[[str], Any], *, trusted: bool = False,
             pin: bool = False):
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"{kind} model name is empty")
        if not trusted and self.allow is not None and name not in self.allow:
            served = ", ".join(sorted(self.allow)) or "none besides the collections' own encoders"
            raise NotFound(f"model {name!r} is not served here (served: {served}); "
                           f"the server's allow_models setting lists the models requests may name")
        key = (kind, name)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                if pin:
                    self._pinned.add(key)
                return self._cache[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one load per model even when many requests ask at once
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            log.info("loading %s model %s", kind, name)
            model = loader(name)
            _freeze_long_lived()
            with self._lock:
                self._cache[key] = model
                self.loads += 1
                if pin:
                    self._pinned.add(key)
                evicted = self._evict_over_limit()
        for old_key, old in evicted:
            log.info("unloading %s model %s (more than %d models loaded)", *old_key, self.max_models)
            if isinstance(old, BatchedEncoder):
                old.retire()
        return model

    def _evict_over_limit(self) -> list[tuple[tuple[str, str], Any]]:
        evicted = []
        for key in list(self._cache):
            if len(self._cache) <= self.max_models:
                break
            if key in self._pinned or key == next(reversed(self._cache)):
                continue
            evicted.append((key, self._cache.pop(key)))
        return evicted

    def dual(self, name: str, *, trusted: bool = False, pin: bool = False) -> BatchedEncoder:
        import encoders

        def load(n):
            return BatchedEncoder(encoders.load(n, device=self.device, dtype=self.dtype), enabled=self.batching,
                                  max_batch=self.max_batch, max_wait_ms=self.max_wait_ms, on_batch=self.on_batch)
        return self._get("dual", name, load, trusted=trusted, pin=pin)

    def for_collection(self, handle) -> BatchedEncoder:
        enc = self.dual(handle.row.encoder_name, trusted=True)
        handle.check_encoder(enc)
        return enc

    def reranker(self, name: str):
        import encoders

        return self._get("rerank", name, lambda n: encoders.load_reranker(n, device=self.device, dtype=self.dtype))

    def captioner(self, name: str):
        import encoders

        return self._get("caption", name, lambda n: encoders.load_captioner(n, device=self.device, dtype=self.dtype))

    def answerer(self, name: str):
        import encoders

        return self._get("answer", name, lambda n: encoders.load_answerer(n, device=self.device, dtype=self.dtype))

    def loaded(self) -> list[str]:
        with self._lock:
            return [f"{kind}:{name}" for kind, name in self._cache]

    def close(self) -> None:
        with self._lock:
            models = list(self._cache.values())
        for model in models:
            if isinstance(model, BatchedEncoder):
                model.close()
                stats = model.stats
                for kind in ("text", "image"):
                    if stats.get(f"{kind}_batches"):
                        log.info("%s %s batches: %d for %d inputs (mean %.1f), model busy %.1f s", model.name, kind,
                                 stats[f"{kind}_batches"], stats[f"{kind}_inputs"],
                                 stats[f"{kind}_inputs"] / stats[f"{kind}_batches"], stats[f"{kind}_busy_s"])


def _freeze_long_lived() -> None:
    """Take everything alive now (a model just loaded: modules, tokenizer tables) out of the cyclic
    collector's reach. Left in, every full collection walks them: ~350k objects and 200 ms with a base
    SigLIP loaded, the GIL held all along, so every request in flight stalls."""
    gc.collect()
    gc.freeze()
