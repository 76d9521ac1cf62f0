"""What `mmsearch import` reads: precomputed embeddings with their metadata, in three layouts.

  clip-retrieval   a folder with img_emb/img_emb_{i}.npy and metadata/metadata_{i}.parquet (clip_inference's
                   output; rows aligned by position within shard i). The uri is the `url` column when it
                   has one (webdataset input), else `image_path`; every other column is metadata. text_emb/
                   is not read (the collection holds image vectors).
  parquet          a .parquet file (or a folder of them): a uri column (`uri`, or one of sources.URI_COLUMNS),
                   one vector column (list<float> / fixed_size_list<float>: the only one, or named), and
                   metadata columns.
  npy + manifest   an .npy matrix and a manifest (JSONL or CSV, as `index` reads them) whose rows align
                   with the matrix rows: FILE.npy beside FILE.jsonl / FILE.ndjson / FILE.csv, or named.

In every layout the columns `width` / `height` (integers) fill the items' built-in columns and `caption`
(a string) their caption; dotted column names (pandas' json_normalize: "exif.iso") become nested metadata.

Reading is bounded in memory whatever the size: parquet through record batches, .npy memory-mapped, a
manifest line by line. Each source is listed (`units`) as `ReadUnit`s and `SourceProblem`s (a shard that
cannot be read: missing metadata, rows not aligned, a corrupt file: the job records them and goes on). A
unit is a small picklable description (a parquet file's run of row groups, with its clip-retrieval vector
file; an .npy slice with its manifest rows) that any process or Ray node reads by itself (`unit.batches`)
into `VectorRows`: batches of aligned rows, with the per-row problems found. A request that cannot work at
all (no such path, an unknown layout, no uri or vector column) raises InvalidInput before anything is read.
"""

from __future__ import annotations

import datetime as dt
import decimal
import glob
import hashlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mmsearch.errors import InvalidInput
from indexer.sources import MANIFEST_EXTENSIONS, URI_COLUMNS, manifest_rows, manifest_uri_column

VECTOR_COLUMNS = ("vector", "embedding", "emb", "img_emb", "image_embedding")  # preferred when several


@dataclass
class VectorRows:
    """A batch of aligned rows. `bad[i]` is why row i cannot be imported (its vector or uri is unusable)."""

    where: str  # the file the rows come from
    first: int  # row number of the first row within that file
    vectors: np.ndarray  # (n, dim), any float dtype
    uris: list  # str or None per row
    metas: list[dict]
    bad: dict[int, str] = field(default_factory=dict)

    def label(self, i: int) -> str:
        """What a job error names for row i: its uri, else file:row."""
        uri = self.uris[i]
        return uri if isinstance(uri, str) and uri else f"{self.where}:{self.first + i}"


@dataclass
class SourceProblem:
    where: str
    reason: str


class ReadUnit:
    """A picklable piece of a source: `batches` reads it (on the driver or on any Ray node) as VectorRows, or a
    SourceProblem for the rows it could not read."""

    rows: int

    def batches(self, size: int) -> Iterator[VectorRows | SourceProblem]:
        raise NotImplementedError


class VectorSource:
    """One input of an import. `rows` (for the progress bar) and `dim` are known before reading."""

    path: str
    rows: int
    dim: int

    def units(self, size: int) -> Iterator[ReadUnit | SourceProblem]:
        """The source listed as units of at least `size` rows (whole parquet row groups; the rest at the end
        of a file), in row order."""
        raise NotImplementedError


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidInput("import: reading parquet needs pyarrow (pip install 'mmsearch[import]')") from None
    return pa, pq


def open_sources(paths, *, vector_column: str | None = None, manifest: str | None = None) -> list[VectorSource]:
    """The sources for the command-line PATHs (checked now: InvalidInput on anything unusable)."""
    paths = list(paths)
    if not paths:
        raise InvalidInput("import: give at least one folder or file")
    if manifest is not None and (len(paths) != 1 or not paths[0].endswith(".npy")):
        raise InvalidInput("import: --manifest goes with exactly one .npy file")
    out: list[VectorSource] = []
    for p in paths:
        if not isinstance(p, str) or not p:
            raise InvalidInput("import: empty path")
        if not os.path.exists(p):
            raise InvalidInput(f"import: {p}: no such file or folder")
        full = os.path.abspath(p)
        if os.path.isdir(full):
            if os.path.isdir(os.path.join(full, "img_emb")):
                out.append(ClipRetrievalSource(full))
                continue
            files = sorted(glob.glob(os.path.join(full, "*.parquet")))
            if not files:
                raise InvalidInput(f"import: {p}: neither a clip-retrieval output folder (img_emb/, metadata/) "
                                   "nor a folder of .parquet files")
            out.extend(ParquetSource(f, vector_column) for f in files)
        elif full.endswith(".parquet"):
            out.append(ParquetSource(full, vector_column))
        elif full.endswith(".npy"):
            out.append(NpySource(full, manifest))
        else:
            raise InvalidInput(f"import: {p}: give a clip-retrieval folder, a .parquet file or folder, "
                               "or an .npy file with its manifest")
    return out


# ---- clip-retrieval ----------------------------------------------------------------------------------------

_SHARD = re.compile(r"img_emb_(\d+)\.npy\Z")


class ClipRetrievalSource(VectorSource):
    def __init__(self, folder: str):
        self.path = folder
        shards = []
        for name in os.listdir(os.path.join(folder, "img_emb")):
            m = _SHARD.match(name)
            if m:
                shards.append((int(m.group(1)), m.group(1), os.path.join(folder, "img_emb", name)))
        if not shards:
            raise InvalidInput(f"import: {folder}/img_emb holds no img_emb_N.npy files")
        self.shards = sorted(shards)
        self.matrices = {}
        dims = set()
        self.rows = 0
        for _, _, npy in self.shards:
            try:
                self.matrices[npy] = m = _open_npy(npy)
            except InvalidInput as exc:
                self.matrices[npy] = exc
                continue
            dims.add(m.shape[1])
            self.rows += m.shape[0]
        if len(dims) > 1:
            raise InvalidInput(f"import: {folder}: shards have different dims ({', '.join(map(str, sorted(dims)))})")
        if not dims:
            raise InvalidInput(f"import: {folder}: no readable img_emb_N.npy file")
        self.dim = dims.pop()

    def units(self, size: int) -> Iterator[ReadUnit | SourceProblem]:
        _pa, pq = _arrow()
        for _, digits, npy in self.shards:
            matrix = self.matrices[npy]
            if isinstance(matrix, InvalidInput):
                yield SourceProblem(npy, str(matrix).removeprefix("import: "))
                continue
            meta_path = os.path.join(self.path, "metadata", f"metadata_{digits}.parquet")
            if not os.path.exists(meta_path):
                yield SourceProblem(npy, f"no metadata/metadata_{digits}.parquet: shard of {len(matrix)} rows "
                                    "not imported (its rows have no uris)")
                continue
            try:
                meta = pq.ParquetFile(meta_path).metadata
                names = meta.schema.to_arrow_schema().names
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / others on damaged files
                yield SourceProblem(meta_path, f"unreadable parquet ({_brief(exc)}): shard not imported")
                continue
            if meta.num_rows != len(matrix):
                yield SourceProblem(npy, f"{len(matrix)} vectors but metadata_{digits}.parquet has {meta.num_rows} "
                                    "rows: shard not imported (rows would not align)")
                continue
            uri_column = "url" if "url" in names else "image_path" if "image_path" in names else None
            if uri_column is None:
                yield SourceProblem(meta_path, "no `url` or `image_path` column: shard not imported")
                continue
            for groups, first, rows in _row_group_runs(meta, size):
                yield ParquetPart(meta_path, groups, first, rows, uri_column, npy=npy)


def _row_group_runs(meta, size: int) -> Iterator[tuple[tuple[int, ...], int, int]]:
    """(row groups, first row, rows) of consecutive row groups holding at least `size` rows (or the rest)."""
    groups: list[int] = []
    first = rows = 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= size:
            yield tuple(groups), first, rows
            first, groups, rows = first + rows, [], 0
    if groups:
        yield tuple(groups), first, rows


@dataclass
class ParquetPart(ReadUnit):
    """Row groups of a parquet file. The vectors are its `vector_column` (plain parquet) or the same rows of the
    clip-retrieval vector file `npy`; the other columns are the uri and metadata."""

    path: str
    row_groups: tuple[int, ...]
    first: int  # the file's row number of the first row
    rows: int
    uri_column: str
    vector_column: str | None = None
    dim: int = 0
    npy: str | None = None

    def batches(self, size: int) -> Iterator[VectorRows | SourceProblem]:
        _pa, pq = _arrow()
        start = self.first
        try:
            matrix = _open_npy(self.npy) if self.npy else None
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=size, row_groups=list(self.row_groups)):
                bad: dict[int, str] = {}
                if matrix is not None:
                    vectors = matrix[start:start + batch.num_rows]
                else:
                    index = batch.schema.get_field_index(self.vector_column)
                    vectors, bad = _list_matrix(batch.column(index), self.dim)
                    batch = batch.drop_columns([self.vector_column])
                uris, metas = _records(batch, self.uri_column)
                yield VectorRows(self.path, start, vectors, uris, metas, bad)
                start += len(uris)
        except Exception as exc:  # a damaged file, or one changed since it was listed
            yield SourceProblem(self.path, f"unreadable from row {start} ({_brief(exc)}): "
                                f"{self.first + self.rows - start} rows not imported")


# ---- plain parquet ---------------------------------------------------------------------------------------------


class ParquetSource(VectorSource):
    def __init__(self, path: str, vector_column: str | None):
        pa, pq = _arrow()
        self.path = path
        try:
            self.file = pq.ParquetFile(path)
            schema = self.file.schema_arrow
            self.rows = self.file.metadata.num_rows
        except Exception as exc:
            raise InvalidInput(f"import: {path}: unreadable parquet ({_brief(exc)})") from None
        lists = [f.name for f in schema if _is_float_list(pa, f.type)]
        if vector_column is not None:
            if vector_column not in schema.names:
                raise InvalidInput(f"import: {path}: no column {vector_column!r}")
            if vector_column not in lists:
                raise InvalidInput(f"import: {path}: column {vector_column!r} is {schema.field(vector_column).type}, "
                                   "not a list of floats")
            self.vector_column = vector_column
        else:
            preferred = [c for c in VECTOR_COLUMNS if c in lists]
            if len(lists) == 1 or preferred:
                self.vector_column = lists[0] if len(lists) == 1 else preferred[0]
            elif not lists:
                raise InvalidInput(f"import: {path}: no vector column (a list<float> or fixed_size_list<float>)")
            else:
                raise InvalidInput(f"import: {path}: several vector columns ({', '.join(lists)}); "
                                   "name one with --vector-column")
        self.uri_column = next((c for c in URI_COLUMNS + ("url",) if c in schema.names), None)
        if self.uri_column is None:
            raise InvalidInput(f"import: {path}: no uri column (one of {', '.join(URI_COLUMNS + ('url',))})")
        vtype = schema.field(self.vector_column).type
        if pa.types.is_fixed_size_list(vtype):
            self.dim = vtype.list_size
        else:
            self.dim = self._first_length()

    def _first_length(self) -> int:
        for batch in self.file.iter_batches(batch_size=64, columns=[self.vector_column]):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    return len(value)
        return 0

    def units(self, size: int) -> Iterator[ReadUnit | SourceProblem]:
        for groups, first, rows in _row_group_runs(self.file.metadata, size):
            yield ParquetPart(self.path, groups, first, rows, self.uri_column, self.vector_column, self.dim)


def _is_float_list(pa, t) -> bool:
    return ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
            and pa.types.is_floating(t.value_type))


def _list_matrix(column, dim: int) -> tuple[np.ndarray, dict[int, str]]:
    """A list column as an (n, dim) matrix; rows that are null or of another length are zeros, in `bad`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(column)
    bad: dict[int, str] = {}
    if pa.types.is_fixed_size_list(column.type) and not column.null_count:
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, dim), bad
    lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    ok = lengths == dim
    for i in np.flatnonzero(~ok):
        bad[int(i)] = "no vector (null)" if lengths[i] < 0 else f"vector has {lengths[i]} values, not {dim}"
    out = np.zeros((n, dim), dtype=np.float32)
    if ok.any():
        good = column.filter(pa.array(ok)) if not ok.all() else column
        out[ok] = good.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out, bad


# ---- npy + manifest ------------------------------------------------------------------------------------------


class NpySource(VectorSource):
    def __init__(self, path: str, manifest: str | None):
        self.path = path
        self.matrix = _open_npy(path)
        self.rows, self.dim = self.matrix.shape
        if manifest is None:
            stem = os.path.splitext(path)[0]
            found = [stem + ext for ext in MANIFEST_EXTENSIONS if os.path.isfile(stem + ext)]
            if not found:
                raise InvalidInput(f"import: {path}: no manifest beside it ({', '.join(os.path.basename(stem) + e for e in MANIFEST_EXTENSIONS)}); "
                                   "name one with --manifest")
            manifest = found[0]
        elif not os.path.isfile(manifest):
            raise InvalidInput(f"import: --manifest {manifest}: no such file")
        elif os.path.splitext(manifest)[1].lower() not in MANIFEST_EXTENSIONS:
            raise InvalidInput(f"import: --manifest {manifest}: use a .jsonl, .ndjson or .csv file")
        self.manifest = os.path.abspath(manifest)
        manifest_uri_column(self.manifest)  # no uri column: a usage error now, not an error per row

    def units(self, size: int) -> Iterator[ReadUnit | SourceProblem]:
        uris: list = []
        metas: list[dict] = []
        bad: dict[int, str] = {}
        start = 0
        for row, (where, uri, meta, error) in enumerate(manifest_rows(self.manifest)):
            if row >= self.rows:
                yield SourceProblem(where, f"manifest row beyond the {self.rows} vectors of {self.path}: "
                                    "this and later rows not imported")
                break
            if error:
                bad[len(uris)] = f"{where}: {error}"
            uris.append(uri.strip() if isinstance(uri, str) else uri)
            metas.append(_nest(meta))
            if len(uris) >= size:
                yield NpyPart(self.path, start, uris, metas, bad)
                start += len(uris)
                uris, metas, bad = [], [], {}
        if uris:
            yield NpyPart(self.path, start, uris, metas, bad)
            start += len(uris)
        if start < self.rows:
            yield SourceProblem(self.path, f"rows {start}..{self.rows - 1} have no manifest row: not imported")


@dataclass
class NpyPart(ReadUnit):
    """Rows `first`.. of an .npy matrix with their manifest rows (read on the driver, line by line)."""

    path: str
    first: int
    uris: list
    metas: list[dict]
    bad: dict[int, str]

    @property
    def rows(self) -> int:
        return len(self.uris)

    def batches(self, size: int) -> Iterator[VectorRows | SourceProblem]:
        try:
            matrix = _open_npy(self.path)
        except InvalidInput as exc:  # changed since it was listed
            yield SourceProblem(self.path, f"{str(exc).removeprefix('import: ')}: {self.rows} rows not imported")
            return
        for at in range(0, self.rows, size):
            n = min(size, self.rows - at)
            bad = {i - at: why for i, why in self.bad.items() if at <= i < at + n}
            start = self.first + at
            yield VectorRows(self.path, start, matrix[start:start + n], self.uris[at:at + n], self.metas[at:at + n],
                             bad)


def _open_npy(path: str) -> np.ndarray:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInput(f"import: {path}: not a readable .npy file ({_brief(exc)})") from None
    if matrix.ndim != 2 or matrix.dtype.kind != "f":
        raise InvalidInput(f"import: {path}: expected a 2-d float matrix, got {matrix.dtype} of shape {matrix.shape}")
    return matrix


# ---- given vectors (import, and Upsert with a vector) -------------------------------------------------------


def unit_rows(vectors) -> tuple[np.ndarray, dict[int, str]]:
    """Given vectors as L2-normalised float32 rows (a copy) and, for rows that cannot be normalised, why."""
    out = np.array(vectors, dtype=np.float32)  # a copy: the source may be a read-only mmap
    if out.ndim == 1:
        out = out[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(out, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    out[usable] /= norms[usable, None]
    problems = {int(i): "vector has all zeros" if norms[i] == 0 else "vector has NaN or infinite values"
                for i in np.flatnonzero(~usable)}
    return out, problems


def vector_sha256(vector: np.ndarray) -> str:
    """The content key of an item made from a given vector: the digest of its float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()


# ---- metadata values -------------------------------------------------------------------------------------------


def _records(batch, uri_column: str) -> tuple[list, list[dict]]:
    """(uris, metadata dicts) of a record batch: the uri column apart, the rest as JSON-able metadata."""
    columns = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)
               if not name.startswith("__index_level_")}  # pandas' stored index
    uris = columns.pop(uri_column)
    names = list(columns)
    values = [columns[name] for name in names]
    metas = []
    for row in zip(*values) if values else ([()] * len(uris)):
        meta = {}
        for name, value in zip(names, row):
            value = _json_value(value)
            if value is not None:
                meta[name] = value
        metas.append(_nest(meta))
    return [u.strip() if isinstance(u, str) else u for u in uris], metas


def _json_value(value):
    """A parquet cell as a JSON value (None: leave the key out)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return _json_value(float(value))
    if isinstance(value, dict):
        out = {str(k): _json_value(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return None  # bytes and other binary values are not metadata


def _nest(meta: dict) -> dict:
    """{"exif.iso": 100} -> {"exif": {"iso": 100}} (a flat key that clashes with a nested one stays flat)."""
    if not any("." in k for k in meta):
        return meta
    out: dict = {}
    for key, value in meta.items():
        parts = key.split(".")
        if len(parts) == 1 or not all(parts):
            out.setdefault(key, value)
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(parts[-1], value)
            continue
        out[key] = value
    return out


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
