"""The rows of an import, ready to commit: one unit of a source (indexer/vector_sources.py) read and its rows
prepared (vectors L2-normalised, the sha256 of their bytes, metadata split into width / height / caption and
the rest, checked), with the errors of the rows that cannot be imported. Both engines of `mmsearch import`
run this: the local one in its own process, the Ray one in a task on any node (indexer/ray_job.py); the
driver commits the batches (jobs.commit_batch). No torch here: a Ray worker reading units starts light.

    for unit in import_units(sources, batch_size):
        for part in prepare_unit(unit, batch_size):  # PreparedRows | SourceProblem
            ...
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from indexer.ingest import check_meta
from indexer.store import UpsertRow
from indexer.vector_sources import SourceProblem, VectorRows, unit_rows, vector_sha256

@dataclass
class PreparedRows:
    """A batch of an import, ready to commit: its rows, the errors of the rows that cannot be imported, how
    many rows it read (`seen`) and the seconds reading and preparing it took."""

    rows: list[UpsertRow]
    errors: list[tuple[str, str]]
    seen: int
    prepare_s: float


def prepare_unit(unit, batch_size: int) -> Iterator[PreparedRows | SourceProblem]:
    """Read one unit of a source (vector_sources.ReadUnit) and prepare its rows, batch by batch: the work of
    both engines (in this process, or a Ray task on any node)."""
    t0 = time.perf_counter()
    for part in unit.batches(batch_size):
        if isinstance(part, VectorRows):
            rows, errors, seen = prepare_rows(part)
            yield PreparedRows(rows, errors, seen, time.perf_counter() - t0)
        else:
            yield part
        t0 = time.perf_counter()


def prepare_rows(part: VectorRows) -> tuple[list[UpsertRow], list[tuple[str, str]], int]:
    """The importable rows of a batch (normalised vectors, sha256 of their bytes, metadata split into
    width / height / caption and the rest) and the errors of the others."""
    vectors, unusable = unit_rows(part.vectors)
    n = len(vectors)
    rows: list[UpsertRow] = []
    errors: list[tuple[str, str]] = []
    for i in range(n):
        if i in part.bad:
            errors.append((part.label(i), part.bad[i]))
            continue
        if i in unusable:
            errors.append((part.label(i), unusable[i]))
            continue
        uri = part.uris[i]
        if uri is not None and not isinstance(uri, str):
            uri = str(uri)
        if not uri:
            errors.append((part.label(i), "row has no uri"))
            continue
        meta = part.metas[i]
        width, height, caption = _take_int(meta, "width"), _take_int(meta, "height"), meta.get("caption")
        if isinstance(caption, str):
            del meta["caption"]
        else:
            caption = None
        problem = check_meta(meta)
        if problem:
            errors.append((uri, problem))
            continue
        vec = vectors[i]
        rows.append(UpsertRow(uri=uri, sha256=vector_sha256(vec), width=width,
                              height=height, vector=vec, meta=meta or None, caption=caption))
    return rows, errors, n


UNIT_ROWS = 100_000  # rows a unit of an import holds at least (bar the end of a file): few, large tasks on Ray


def import_units(sources, batch_size: int) -> Iterator:
    """The sources' read units (vector_sources.ReadUnit) and listing problems, in source order."""
    for src in sources:
        yield from src.units(max(batch_size, UNIT_ROWS))


def _take_int(meta: dict, key: str) -> int:
    """An integer width / height column moves to the item's built-in column (0 when absent)."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0
    if isinstance(value, float) and not value.is_integer():
        return 0
    if not 0 <= value < 2**31:
        return 0
    del meta[key]
    return int(value)
