"""The facade over a data dir: the catalog, one FAISS index per collection, the encoder binding.

    from indexer.store import Store
    store = Store.open(data_dir, db=None)          # db: SQLAlchemy URL, default $MMSEARCH_DB or SQLite in data_dir
    coll = store.collection("photos")              # NotFound if absent
    coll = store.create_collection("photos", enc)  # binds encoder name + digest + dim (Conflict if it exists)
    coll = store.open_or_create("photos", enc)     # create, or check the binding (Conflict on another encoder)
    enc = store.encoder_for(coll)                  # encoders.load(coll.encoder_name), digest checked, cached
    coll.check_encoder(enc)                        # Conflict unless enc.digest/dim match the collection

    hits = coll.search(vectors, k=10, where=None, ids=None, nprobe=None, ef=None)
        # vectors: (m, dim) float32 rows (a single (dim,) vector is fine) -> list (per query) of [Hit(id, score)]
        # where: an SQLAlchemy boolean expression over catalog.Item columns (search/filters.py builds it);
        # ids: an iterable of allowed item ids. Restricted searches return a full top-k when at least k match.
    items = coll.get([ids])                        # {id: catalog.ItemRow} for the live ones among ids
    n = coll.delete(ids=[..] | uris=[..] | where=expr)   # soft-delete, returns how many; index updated
    coll.upsert([UpsertRow(uri, sha256, width, height, vector, meta, caption)])
        # -> [(id, None) | (holder id, reason)]: replaces by uri, refuses content already held by another item
    coll.count(); coll.rebuild(spec="ivf"); coll.refresh()
    coll.maybe_retrain(background=False)           # auto: re-choose the kind (Upsert / Delete do it in the background)
    store.close()                                  # saves index files that moved past their on-disk copy

Every method takes care of keeping the index and the catalog in step: before a search the index is caught up
to the catalog revision (one cheap query when nothing changed), so a server sees what a running indexing
job committed. Index files live at DATA_DIR/indices/<collection>.faiss (+ its .payload, indexer/ann).
`index_memory` (bytes or "4GB") is the budget `auto` chooses a kind under, unless a collection has its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mmsearch.errors import Conflict, InvalidInput
from indexer.catalog import Catalog, Collection, Item, ItemFilter, ItemRow, NewItem, as_filter, database_url
from indexer.ann import (DEFAULT_INDEX_MEMORY, IndexFileError, IndexSpec, VectorIndex, normalize_rows, parse_memory,
                         payload_files)

log = logging.getLogger("mmsearch.indexer")

CLOSE_REBUILD_WAIT_S = 10.0  # Store.close waits this long for an abandoned background rebuild to stop


def default_data_dir() -> str:
    return os.environ.get("MMSEARCH_DATA", "./mmsearch-data")


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


@dataclass(frozen=True)
class UpsertRow:
    """One item to write: `vector` is the L2-normalised float32 embedding; `meta`/`caption` None keeps the
    stored value when the row replaces an existing uri."""

    uri: str
    sha256: str
    width: int
    height: int
    vector: np.ndarray | None
    meta: dict | None = None
    caption: str | None = None


class Store:
    """An open data dir. Thread-safe; one per process is enough."""

    def __init__(self, data_dir: str | os.PathLike | None = None, db: str | None = None, *,
                 shard: tuple[int, int] | None = None, media_dir: str | os.PathLike | None = None,
                 index_memory: int | str | None = None):
        """`shard` = (i, n): the indices hold only the items with id % n == i (this server is shard i of n;
        the catalog, shared by all shards, holds everything). `media_dir`: where the copies of uploaded
        images and the thumbnails live (default: the data dir; servers sharing a catalog share it too)."""
        if shard is not None and not (isinstance(shard, tuple) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
            raise InvalidInput(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        self.shard = shard
        self.index_memory = parse_memory(index_memory) or DEFAULT_INDEX_MEMORY
        self.data_dir = os.path.abspath(os.fspath(data_dir or default_data_dir()))
        os.makedirs(self.data_dir, exist_ok=True)
        self.media_dir = os.path.abspath(os.fspath(media_dir)) if media_dir else self.data_dir
        self.catalog = Catalog(database_url(self.data_dir, db))
        self._handles: dict[str, CollectionHandle] = {}
        self._encoders: dict[tuple[str, str], object] = {}
        self._lock = threading.RLock()

    @classmethod
    def open(cls, data_dir: str | os.PathLike | None = None, db: str | None = None, *,
             shard: tuple[int, int] | None = None, media_dir: str | os.PathLike | None = None,
             index_memory: int | str | None = None) -> "Store":
        return cls(data_dir, db, shard=shard, media_dir=media_dir, index_memory=index_memory)

    def close(self) -> None:
        """Persist indices that moved past their file, then release the database. A background rebuild still
        running is abandoned (the index in use is saved instead; the next write re-chooses), waiting at most
        CLOSE_REBUILD_WAIT_S for it to stop, so a server told to stop does not hang on one."""
        with self._lock:
            for handle in self._handles.values():
                handle.abandon_rebuild(CLOSE_REBUILD_WAIT_S)
                try:
                    handle.save_if_changed()
                except Exception as exc:  # never lose the close over a cache file; it is rebuilt on open
                    log.warning("could not save the index of %s: %s", handle.name, exc)
        self.catalog.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def index_path(self, name: str) -> str:
        return os.path.join(self.data_dir, "indices", f"{name}.faiss")

    # ---- collections ------------------------------------------------------------------------------------------

    def collections(self) -> list[Collection]:
        return self.catalog.list_collections()

    def collection(self, name: str) -> "CollectionHandle":
        return self.collection_at(name)[0]

    def collection_at(self, name: str) -> tuple["CollectionHandle", tuple[int, int]]:
        """The handle and the collection's (revision, purged_rev) as of now, read in one query. The search
        path hands the revision to `handle.search(..., revision=)`, so the index catch-up check needs no
        second query after the (slow) query encoding."""
        with self._lock:
            handle = self._handles.get(name)
        if handle is not None:  # the usual case: one cheap query checks it and gives the revision
            state = self.catalog.collection_state(name)
            if state is not None and state[0] == handle.row.uid:
                return handle, state[1:]
        with self._lock:
            row = self.catalog.get_collection(name)
            handle = self._handles.get(name)
            if handle is None or handle.row.uid != row.uid:
                handle = self._handles[name] = CollectionHandle(self, row)
            return handle, (row.revision, row.purged_rev)

    def create_collection(self, name: str, encoder, index_spec: str | None = None, *,
                          text_fields: Iterable[str] = (), index_memory: int | str | None = None
                          ) -> "CollectionHandle":
        """`text_fields`: metadata fields the full-text index holds beside captions and file names;
        `index_memory`: the collection's own budget for `auto` (None: the store's)."""
        spec = IndexSpec.parse(index_spec)
        self.catalog.create_collection(name, encoder_name=encoder.name, encoder_family=encoder.family,
                                       encoder_digest=encoder.digest, dim=int(encoder.dim), index_spec=str(spec),
                                       text_fields=list(text_fields), index_memory=parse_memory(index_memory))
        return self.collection(name)

    def open_or_create(self, name: str, encoder, index_spec: str | None = None, *,
                       text_fields: Iterable[str] | None = None,
                       index_memory: int | str | None = None) -> "CollectionHandle":
        """`text_fields` given for an existing collection with other fields: they change (every item's text
        document is rewritten); so does a different `index_memory` (auto re-chooses under it)."""
        if self.catalog.find_collection(name) is None:
            try:
                return self.create_collection(name, encoder, index_spec, text_fields=text_fields or (),
                                              index_memory=index_memory)
            except Conflict:  # created concurrently by another process
                pass
        handle = self.collection(name)
        handle.check_encoder(encoder)
        if index_spec is not None and IndexSpec.parse(index_spec) != IndexSpec.parse(handle.row.index_spec):
            raise Conflict(f"collection {name!r} uses index {handle.row.index_spec}; "
                           f"change it with `mmsearch rebuild --collection {name} --index {index_spec}`")
        if text_fields is not None and list(text_fields) != list(handle.row.text_fields or []):
            handle.set_text_fields(text_fields)
        if index_memory is not None and parse_memory(index_memory) != handle.row.index_memory:
            handle.set_index_memory(index_memory)
        return handle

    def drop_collection(self, name: str) -> None:
        row = self.catalog.get_collection(name)
        self.catalog.drop_collection(row.id)
        with self._lock:
            self._handles.pop(name, None)
        for path in [self.index_path(name), *payload_files(self.index_path(name))]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. a folder in its place: not ours to remove
                log.warning("could not remove the index file of %s (%s)", name, exc.strerror or exc)

    def encoder_for(self, coll: "CollectionHandle | str", device: str = "cpu"):
        """The encoder a collection is bound to, loaded from its recorded name; Conflict if the weights found
        there are not the ones the collection was built with."""
        import encoders

        handle = self.collection(coll) if isinstance(coll, str) else coll
        key = (handle.row.encoder_name, device)
        with self._lock:
            enc = self._encoders.get(key)
            if enc is None:
                enc = self._encoders[key] = encoders.load(handle.row.encoder_name, device=device)
        handle.check_encoder(enc)
        return enc


class CollectionHandle:
    """One collection: its catalog row and its (lazily opened, kept current) FAISS index."""

    def __init__(self, store: Store, row: Collection):
        self.store, self.row = store, row
        self._index: VectorIndex | None = None
        self._saved_watermark = -1
        self._lock = threading.RLock()
        self._rebuilding: threading.Thread | None = None  # a background re-choice of the index kind
        self._abandon = threading.Event()  # set by Store.close: the background rebuild stops, swapping nothing

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def dim(self) -> int:
        return self.row.dim

    @property
    def catalog(self) -> Catalog:
        return self.store.catalog

    def check_encoder(self, enc) -> None:
        if enc.digest != self.row.encoder_digest or int(enc.dim) != self.row.dim:
            raise Conflict(f"collection {self.name!r} is bound to encoder {self.row.encoder_name} "
                           f"(digest {self.row.encoder_digest[:12]}, dim {self.row.dim}); "
                           f"{enc.name} has digest {enc.digest[:12]}, dim {enc.dim}")

    def count(self) -> int:
        return self.catalog.count(self.id)

    def set_text_fields(self, fields: Iterable[str]) -> list[str]:
        """Change the metadata fields of the collection's full-text index (documents rewritten)."""
        stored = self.catalog.set_text_fields(self.id, list(fields))
        self.row = self.catalog.get_collection(self.name)
        return stored

    @property
    def index_memory(self) -> int:
        """The memory budget `auto` chooses under: the collection's own, else the store's."""
        return self.row.index_memory or self.store.index_memory

    def set_index_memory(self, memory: int | str | None) -> None:
        """Store a budget of the collection's own (None: follow the server's); `auto` re-chooses."""
        self.catalog.set_index_spec(self.id, self.row.index_spec, parse_memory(memory), keep_memory=False)
        self.row = self.catalog.get_collection(self.name)

    # ---- reads -------------------------------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int = 10, *, where=None, ids: Iterable[int] | None = None,
               nprobe: int | None = None, ef: int | None = None, revision: tuple[int, int] | None = None
               ) -> list[list[Hit]]:
        """Nearest items by inner product for each query row (see module docstring). `revision`: the
        collection's (revision, purged_rev) read earlier in this request (Store.collection_at)."""
        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInput(f"query vectors must have dim {self.dim} (collection {self.name!r}), got {q.shape}")
        if not np.isfinite(q).all():
            raise InvalidInput("query vectors contain NaN or infinity")
        q = normalize_rows(q)
        allowed = None
        if where is not None:  # tombstones among the ids are fine: the index, caught up below, dropped them
            allowed = self.catalog.select_ids(self.id, where, tombstones=True)
        if ids is not None:
            given = (ids.astype(np.int64, copy=False) if isinstance(ids, np.ndarray)
                     else np.fromiter((int(i) for i in ids), dtype=np.int64))
            allowed = given if allowed is None else np.intersect1d(allowed, given)
        index = self.refresh(revision)  # after selecting: every allowed id committed so far is in the index
        scores, found = index.search(q, k, allowed=allowed, nprobe=nprobe, ef=ef)
        return [[Hit(int(i), float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, found)]

    def get(self, ids: Iterable[int], *, with_vectors: bool = True) -> dict[int, ItemRow]:
        return self.catalog.items_by_id(self.id, list(ids), with_vectors=with_vectors)

    # ---- writes ------------------------------------------------------------------------------------------------

    def upsert(self, rows: list[UpsertRow]) -> list[tuple[int, str | None]]:
        """Write rows in one transaction: a row whose uri is live replaces that item (same id); a row whose
        content (sha256) is already live under another uri is refused. Returns, per row, (item id, None) or
        (id of the item that already holds this content, reason)."""
        with self.catalog.write(self.id) as (s, rev):
            outcome, ids, vecs = self.write_rows(s, rev, rows, replace_uri=True)
        self.apply_commit(rev, ids, vecs)
        self._rechoose()
        return [(i, None if what != "duplicate" else f"the same image is already item {i} of collection {self.name!r}")
                for i, what in outcome]

    def write_rows(self, s, rev: int, rows: list[UpsertRow], *, replace_uri: bool
                   ) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray]:
        """Inside a `catalog.write` transaction: insert / replace rows. Returns ([(id, "added" | "updated" |
        "duplicate")], ids written, their vectors) — the last two go to `apply_commit` after the commit.
        A row whose uri an earlier row of the batch wrote replaces that one."""
        vectors = self._checked_vectors(rows)
        catalog = self.catalog
        # What a uri / a sha256 belongs to: ("id", item id) for stored items, ("new", i) for inserts[i].
        owner = {sha: ("id", i) for sha, i in catalog.existing_shas(s, self.id, [r.sha256 for r in rows]).items()}
        target = ({uri: ("id", i) for uri, (i, _) in catalog.live_by_uri(s, self.id, [r.uri for r in rows]).items()}
                  if replace_uri else {})
        inserts: list[NewItem] = []
        updates: dict[int, NewItem] = {}
        plan: list[tuple[tuple[str, int], str]] = []
        size = 4 * self.dim
        for at, r in enumerate(rows):
            to, held = target.get(r.uri), owner.get(r.sha256)
            if held is not None and held != to:
                plan.append((held, "duplicate"))
                continue
            item = NewItem(uri=r.uri, sha256=r.sha256, width=int(r.width), height=int(r.height),
                           vector=vectors[at * size:(at + 1) * size], meta=r.meta, caption=r.caption)
            if to is None:
                to = target[r.uri] = ("new", len(inserts))
                inserts.append(item)
                plan.append((to, "added"))
            else:
                before = inserts[to[1]] if to[0] == "new" else updates.get(to[1])
                if before is not None:  # written twice in one batch: metadata / caption not given are kept
                    item.meta = before.meta if item.meta is None else item.meta
                    item.caption = before.caption if item.caption is None else item.caption
                if to[0] == "new":
                    inserts[to[1]] = item
                else:
                    updates[to[1]] = item
                plan.append((to, "updated"))
            owner[r.sha256] = to  # the earlier content of a replaced item stays claimed within the batch
        new_ids = catalog.insert_items(s, self.id, rev, inserts)
        catalog.update_items(s, self.id, rev, list(updates.items()))
        result = [(int(new_ids[ref]) if kind == "new" else ref, what) for (kind, ref), what in plan]
        written = inserts + list(updates.values())
        ids = np.concatenate([new_ids, np.fromiter(updates, dtype=np.int64, count=len(updates))])
        vecs = (np.frombuffer(b"".join(it.vector for it in written), dtype="<f4").reshape(len(ids), self.dim)
                .astype(np.float32) if written else np.zeros((0, self.dim), np.float32))
        return result, ids, vecs

    def _checked_vectors(self, rows: list[UpsertRow]) -> bytes:
        """The rows' vectors as one float32 little-endian buffer (row i at 4 * dim * i), checked in one pass:
        InvalidInput names the first row whose vector is not `dim` finite floats."""
        if not rows:
            return b""
        try:
            matrix = np.stack([np.asarray(r.vector, dtype="<f4") for r in rows])
        except (ValueError, TypeError):  # ragged shapes: find the row below
            matrix = None
        if matrix is not None and matrix.shape == (len(rows), self.dim) and np.isfinite(matrix).all():
            return matrix.tobytes()
        for row in rows:
            vec = np.asarray(row.vector, dtype="<f4")
            if vec.shape != (self.dim,) or not np.isfinite(vec).all():
                raise InvalidInput(f"{row.uri}: vector must be {self.dim} finite floats, got shape {vec.shape}")
        raise InvalidInput(f"vectors must be {self.dim} finite floats")  # not reached: some row failed above

    def delete(self, *, ids: Iterable[int] | None = None, uris: Iterable[str] | None = None, where=None) -> int:
        """Soft-delete live items by id, by uri and/or by a filter (an ItemFilter from search/filters.py,
        or an SQLAlchemy condition over Item); all given conditions must hold. Returns the number deleted;
        the open index is updated."""
        if ids is None and uris is None and where is None:
            raise InvalidInput("delete: give ids, uris or a filter")
        cond = as_filter(where)
        if uris is not None:
            by_uri = Item.uri.in_(list(uris))
            cond = ItemFilter(condition=by_uri, residual=by_uri) if cond is None else cond.also(by_uri)
        removed = self.catalog.delete_where(self.id, cond, ids=None if ids is None else list(ids))
        if removed:
            self.refresh()  # the file catches up from the tombstones when next opened; saved on close
            self._rechoose()
        return len(removed)

    # ---- the index ---------------------------------------------------------------------------------------------

    @property
    def index(self) -> VectorIndex:
        return self.refresh()

    def refresh(self, revision: tuple[int, int] | None = None) -> VectorIndex:
        """Open the index if needed and catch it up with the catalog (to `revision` = (revision, purged_rev)
        when the caller has just read it); returns it. An index ahead of a given revision is fine (this
        process applied a newer commit meanwhile); ahead of a freshly read one, the catalog went back."""
        with self._lock:
            if self._index is None or revision is None:
                rev, purged = self.catalog.revision(self.id)
                ahead = self._index is not None and self._index.watermark > rev
            else:
                (rev, purged), ahead = revision, False
            if self._index is None:
                self._index = self._open(rev, purged)
            elif self._index.watermark < purged or ahead:
                self._index = self._build(rev)
            elif self._index.watermark < rev:
                self._catch_up(self._index, rev)
            return self._index

    def _open(self, rev: int, purged: int) -> VectorIndex:
        path = self.store.index_path(self.name)
        _remove_stale_temp_files(path)
        if not os.path.lexists(path):
            log.info("index %s: no file, building from the catalog", path)
            return self._build(rev, save=True)
        try:
            index, meta = VectorIndex.load(path)
            self._attach(index)
        except IndexFileError as exc:
            log.warning("index %s unusable (%s); rebuilding from the catalog", path, exc)
            return self._build(rev, save=True)
        self._saved_watermark = index.watermark
        reason = None
        if meta.get("collection_uid") != self.row.uid or meta.get("collection_id") != self.id:
            reason = "belongs to another collection"
        elif meta.get("encoder_digest") != self.row.encoder_digest or meta["dim"] != self.dim:
            reason = "was built for another encoder"
        elif index.watermark > rev:
            reason = f"is ahead of the catalog (watermark {index.watermark} > revision {rev})"
        elif index.watermark < purged:
            reason = f"is older than the last tombstone purge ({index.watermark} < {purged})"
        elif not self._spec_fits(index.spec):
            reason = f"uses {index.spec}, collection wants {self.row.index_spec}"
        elif meta.get("shard") != (list(self.store.shard) if self.store.shard else None):
            reason = f"holds shard {meta.get('shard')}, this store is shard {self.store.shard}"
        if reason:
            log.warning("index %s %s; rebuilding", path, reason)
            return self._build(rev, save=True)
        if index.watermark < rev and self._catch_up(index, rev):
            self._save(index)
        return index

    def _spec_fits(self, spec: IndexSpec) -> bool:
        want = IndexSpec.parse(self.row.index_spec)
        if want.kind == "auto":
            return True  # retuned by maybe_retrain
        return (want.kind == spec.kind and (want.param is None or want.param == spec.param)
                and (want.m is None or want.m == spec.m))

    def _attach(self, index: VectorIndex) -> VectorIndex:
        """Compressed kinds re-rank from the exact vectors in the catalog (item_vectors, by primary key)."""
        dim, catalog = self.dim, self.catalog
        index.vector_source = lambda ids: catalog.vectors_by_id(ids, dim)
        return index

    def _mine(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` this store's indices hold (all, unless it is one shard of several)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.store.shard is None:
            return np.ones(len(ids), dtype=bool)
        i, n = self.store.shard
        return ids % n == i

    def _catch_up(self, index: VectorIndex, rev: int) -> int:
        """Apply catalog rows with rev > index.watermark; returns how many rows were applied."""
        applied = 0
        for ids, dead, vecs, _dim in self.catalog.changes_since(self.id, index.watermark):
            if dead.any():
                index.remove(ids[dead])
            live = ~dead & self._mine(ids)
            if live.any():
                index.add(ids[live], vecs[live])
            applied += len(ids)
        index.watermark = rev
        return applied

    def apply_commit(self, rev: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        """After a write transaction at `rev` that added/replaced (ids, vectors): apply it to the open index.
        When other writers committed in between, catch up from the catalog instead."""
        with self._lock:
            index = self._index
            if index is not None and index.watermark == rev - 1:
                mine = self._mine(ids)
                index.add(ids[mine], vectors[mine])
                index.watermark = rev
            else:
                self.refresh()

    def _build(self, rev: int, spec: IndexSpec | None = None, *, save: bool = False) -> VectorIndex:
        """A fresh index from the live catalog rows, covering revision `rev` (read before the scan)."""
        t0 = time.perf_counter()
        n = self.catalog.count(self.id)
        spec = (spec or IndexSpec.parse(self.row.index_spec)).resolve(n, self.dim, self.index_memory)
        training = None
        if VectorIndex.kinds[spec.kind].trained:
            if n == 0:
                spec = IndexSpec("flat")  # nothing to train on yet; retrained once items arrive
            else:
                training = self._training_sample(n, max((spec.param or 0) * 64, 20_000))
                if spec.kind.startswith("ivf"):
                    spec = IndexSpec(spec.kind, min(spec.param, len(training)), spec.m)
        self._check_abandoned()
        index = self._attach(VectorIndex.empty(spec, self.dim, training, n_hint=n))
        for ids, _dead, vecs, _dim in self.catalog.all_live(self.id):
            self._check_abandoned()
            mine = self._mine(ids)
            index.add(ids[mine], vecs[mine])
        index.watermark = rev
        log.info("built %s index for %s: %d items in %.1fs", spec, self.name, index.ntotal, time.perf_counter() - t0)
        if save:
            self._save(index)
        return index

    def _check_abandoned(self) -> None:
        if self._abandon.is_set() and threading.current_thread() is self._rebuilding:
            raise _Abandoned()

    def _training_sample(self, n: int, want: int) -> np.ndarray:
        keep = min(1.0, want / max(n, 1))
        rng = np.random.default_rng(0)
        parts = []
        for _ids, _dead, vecs, _dim in self.catalog.all_live(self.id):
            self._check_abandoned()
            parts.append(vecs if keep >= 1.0 else vecs[rng.random(len(vecs)) < keep])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def rebuild(self, spec: str | None = None) -> VectorIndex:
        """Rebuild from the catalog (optionally with a new spec, which is stored), save, and purge tombstones."""
        with self._lock:
            if spec is not None:
                parsed = IndexSpec.parse(spec)
                self.catalog.set_index_spec(self.id, str(parsed))
                self.row = self.catalog.get_collection(self.name)
            rev, _purged = self.catalog.revision(self.id)
            self._index = self._build(rev, save=True)
            self.catalog.purge_deleted(self.id, rev)
            return self._index

    def maybe_retrain(self, *, background: bool = False) -> bool:
        """Re-choose the index: under `auto`, when the size / budget calls for another kind (with a 25% band
        so a collection at a threshold does not flip back and forth); under an ivf* spec, when it was built
        flat (empty) or its quantizer was trained on 4x fewer items. The new index is built from the catalog
        without holding the handle's lock, so searches and writes go on against the old one; the writes made
        meanwhile are applied to the new one from the catalog before it is swapped in. Returns whether a
        rebuild was needed (with `background`, it runs on a thread: see `wait_rebuild`)."""
        with self._lock:
            if self._rebuilding is not None and self._rebuilding.is_alive():
                return True
            target = self._rechoice(self.refresh())
            if target is None:
                return False
            if background:
                self._rebuilding = threading.Thread(target=self._rebuild_and_swap, args=(target,), daemon=True,
                                                    name=f"mmsearch-rebuild-{self.name}")
                self._rebuilding.start()
                return True
        self._rebuild_and_swap(target)
        return True

    def wait_rebuild(self, timeout: float | None = None) -> None:
        thread = self._rebuilding
        if thread is not None:
            thread.join(timeout)

    def abandon_rebuild(self, timeout: float) -> bool:
        """Tell a background rebuild to stop (it checks between catalog pages and before the swap, never
        swapping or saving afterwards) and wait up to `timeout` s; returns whether none is running now."""
        thread = self._rebuilding
        if thread is None or not thread.is_alive():
            return True
        self._abandon.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the background rebuild of %s's index did not stop within %.0fs (inside FAISS); "
                        "closing without it", self.name, timeout)
            return False
        return True

    def _rechoice(self, index: VectorIndex) -> IndexSpec | None:
        """The spec to rebuild with, or None when the index fits the collection."""
        want = IndexSpec.parse(self.row.index_spec)
        n, have = index.ntotal, index.spec
        outgrown = have.kind.startswith("ivf") and n > 4 * max(index.trained_n, 1)
        if want.kind == "auto":
            memory = self.index_memory
            target = want.resolve(n, self.dim, memory)
            if target.kind != have.kind:
                near = {want.resolve(int(n * f), self.dim, memory).kind for f in (0.8, 1.25)}
                return None if have.kind in near else want
            return want if outgrown else None
        if want.kind.startswith("ivf") and (have.kind != want.kind or want.param is None and outgrown):
            return want
        return None

    def _rechoose(self) -> None:
        """After a write: re-choose the kind in the background; a failure there never fails the write."""
        try:
            self.maybe_retrain(background=True)
        except Exception as exc:
            log.warning("could not re-choose the index of %s: %s", self.name, exc)

    def _rebuild_and_swap(self, spec: IndexSpec) -> None:
        try:
            rev, _purged = self.catalog.revision(self.id)
            fresh = self._build(rev, spec)  # the slow part, outside the lock
            with self._lock:
                self._check_abandoned()
                rev, purged = self.catalog.revision(self.id)
                if fresh.watermark < purged:  # tombstones it needs were purged meanwhile: build again, locked
                    fresh = self._build(rev, spec)
                else:
                    self._catch_up(fresh, rev)
                self._check_abandoned()
                self._index = fresh
            self._save(fresh)  # outside the lock: searches go on while the payload is written
        except _Abandoned:
            log.info("rebuilding the index of %s as %s: abandoned (the store is closing)", self.name, spec)
        except Exception as exc:  # the old index keeps serving; the next write tries again
            log.warning("rebuilding the index of %s as %s failed: %s", self.name, spec, exc)
            if threading.current_thread() is not self._rebuilding:
                raise

    def save_if_changed(self) -> None:
        with self._lock:
            if self._index is not None and self._index.watermark != self._saved_watermark:
                self._save(self._index)

    def save_index(self) -> None:
        """Persist the index, caught up to the current catalog revision."""
        with self._lock:
            self._save(self.refresh())

    def _save(self, index: VectorIndex) -> None:
        """Write the index file. It is a cache: when the path cannot take it (a folder in its place, a full
        disk) the index keeps serving from memory and is rebuilt from the catalog next time."""
        path = self.store.index_path(self.name)
        try:
            index.save(path, {"collection_id": self.id, "collection_uid": self.row.uid, "collection": self.name,
                              "encoder_digest": self.row.encoder_digest, "encoder_name": self.row.encoder_name,
                              "shard": list(self.store.shard) if self.store.shard else None})
        except OSError as exc:
            log.warning("could not save the index of %s to %s (%s); serving it from memory, it is rebuilt "
                        "from the catalog when next opened", self.name, path, exc.strerror or exc)
            return
        self._saved_watermark = index.watermark


class _Abandoned(Exception):
    """A background rebuild stops: the store is closing."""


def _remove_stale_temp_files(path: str, age_s: float = 3600.0) -> None:
    """Temp files and payloads no header names, left by a save that was killed midway (a live save
    finishes in well under an hour)."""
    folder, base = os.path.split(path)
    try:
        names = os.listdir(folder)
        named = str(VectorIndex.read_header(path).get("payload"))
    except (OSError, IndexFileError):
        named = None
        if not os.path.isdir(folder):
            return
        names = os.listdir(folder)
    now = time.time()
    for name in names:
        if name.startswith(base + ".") and (name.endswith(".tmp") or name.endswith(".payload") and name != named):
            full = os.path.join(folder, name)
            try:
                if now - os.path.getmtime(full) > age_s:
                    os.unlink(full)
            except OSError:
                pass
