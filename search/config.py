"""The server's settings: one dataclass, filled from defaults, a TOML file and command-line flags.

    config = ServerConfig.from_file("server.toml", workers=32)   # flags given (not None) win over the file
    config.check()                                               # InvalidInput naming the bad key

Every key of the TOML file is a field name below; unknown keys are refused so a typo is not silently
ignored.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mmsearch.errors import InvalidInput
from search.pipeline import DEFAULT_RERANK_DEPTH, MAX_RERANK_DEPTH

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ServerConfig:
    address: str = "127.0.0.1:50051"     # gRPC HOST:PORT (port 0 picks a free one; "" = no gRPC)
    http: str = ""                       # HTTP HOST:PORT for the page, the JSON API and /metrics ("" = none)
    data_dir: str | None = None          # None: $MMSEARCH_DATA or ./mmsearch-data
    db: str | None = None                # SQLAlchemy URL of the catalog (default: SQLite in data_dir)
    workers: int = 16                    # request threads
    max_message_mb: float = 64.0         # largest request / response message
    token: str | None = None             # bearer token; None: no auth ($MMSEARCH_TOKEN is read by the CLI)
    tls_cert: str | None = None          # PEM files; both or neither
    tls_key: str | None = None
    batching: bool = True
    batch_max: int = 32
    batch_wait_ms: float = 2.0
    rerank_default_depth: int = DEFAULT_RERANK_DEPTH
    rerank_max_depth: int = MAX_RERANK_DEPTH
    # Shutdown: on SIGTERM health reports NOT_SERVING for health_grace_s while calls are still taken (so
    # load balancers stop sending), then new calls are refused and in-flight ones get drain_seconds.
    health_grace_s: float = 2.0
    drain_seconds: float = 30.0
    default_deadline_s: float = 120.0    # for calls that carry no deadline (grpcurl, most generated clients)
    device: str = "cpu"
    dtype: str | None = None             # float32 (default) | bfloat16 | float16 (CUDA)
    # Models requests may name (rerank, caption, embed by name) beyond the collections' own encoders and
    # `preload`; anything else is NOT_FOUND. At most max_models stay loaded (least recently used go).
    allow_models: list[str] = field(default_factory=list)
    preload: list[str] = field(default_factory=list)   # dual encoders loaded at start (and always allowed)
    max_models: int = 8
    # Folders whose files the server may read: Upsert by path, and the pixels of items made from files
    # there (rerank, captions). Items uploaded as bytes are read back from the server's own copy.
    image_roots: list[str] = field(default_factory=list)
    media_dir: str | None = None         # copies of uploads + thumbnails (default data_dir); share it between
                                         # replicas / shards of one catalog (e.g. a network folder)
    keep_images: bool = True             # keep Upsert image bytes under DATA_DIR/images for rerank / captions
    # Decoded pixels: one image at most max_image_mp megapixels; all requests together hold at most
    # pixel_budget_mp decoded at once (a request waits for room until its deadline, then RESOURCE_EXHAUSTED).
    max_image_mp: float = 100.0
    pixel_budget_mp: float = 400.0
    # Shards: this server's share "I/N" (its indices hold the items with id % N == I), and the gRPC
    # addresses of all N shards in shard order; a Search sent to any of them fans out over all.
    shard: str | None = None
    index_memory: str | int | None = None  # budget `auto` chooses the index kind under ("4GB"); None: 4 GiB
    shards: list[str] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: str, **overrides) -> "ServerConfig":
        """Read a TOML file whose keys are the field names; `overrides` that are not None win."""
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist") from None
        except OSError as exc:
            raise InvalidInput(f"config file {path}: cannot read ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"config file {path}: {exc}") from None
        if "upsert_roots" in values:  # the name this key had before it also covered rerank and captions
            values["image_roots"] = list(values.pop("upsert_roots")) + list(values.get("image_roots", []))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except TypeError as exc:
            raise InvalidInput(f"config file {path}: {exc}") from None

    def check(self) -> None:
        """Refuse settings that cannot work, naming the key."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InvalidInput(message)

        for name in ("workers", "batch_max", "max_models", "rerank_default_depth", "rerank_max_depth"):
            need(isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool),
                 f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("max_message_mb", "batch_wait_ms", "health_grace_s", "drain_seconds", "default_deadline_s",
                     "max_image_mp", "pixel_budget_mp"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and value == value,
                 f"{name} must be a number, got {value!r}")
        for name in ("allow_models", "preload", "image_roots", "shards"):
            value = getattr(self, name)
            need(isinstance(value, list) and all(isinstance(v, str) and v for v in value),
                 f"{name} must be a list of non-empty strings")
        for name in ("address", "http"):
            need(isinstance(getattr(self, name), str), f"{name} must be a HOST:PORT string")
        need(bool(self.address or self.http), "nothing to serve: give a gRPC address, an http address or both")
        need(bool(self.tls_cert) == bool(self.tls_key), "TLS needs both tls_cert and tls_key")
        need(1 <= self.workers <= 1024, f"workers must be 1..1024, got {self.workers}")
        need(0 < self.max_message_mb <= 2047, f"max_message_mb must be in (0, 2047], got {self.max_message_mb}")
        need(1 <= self.batch_max <= 4096 and self.batch_wait_ms >= 0,
             "batch_max must be 1..4096 and batch_wait_ms >= 0")
        need(self.health_grace_s >= 0 and self.drain_seconds >= 0, "health_grace_s and drain_seconds must be >= 0")
        need(self.default_deadline_s > 0, f"default_deadline_s must be > 0, got {self.default_deadline_s}")
        need(1 <= self.max_models <= 1000, f"max_models must be 1..1000, got {self.max_models}")
        need(0 < self.max_image_mp <= self.pixel_budget_mp,
             f"max_image_mp must be > 0 and <= pixel_budget_mp ({self.max_image_mp} > {self.pixel_budget_mp})")
        need(1 <= self.rerank_default_depth <= self.rerank_max_depth,
             "rerank_default_depth must be 1..rerank_max_depth")
        need(self.dtype in (None, *DTYPES), f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        from search.shards import parse_shard

        shard = parse_shard(self.shard)
        if shard is not None and self.shards:
            need(len(self.shards) == shard[1], f"shard {self.shard}: shards lists {len(self.shards)} addresses, "
                                               f"not {shard[1]}")
        from indexer.ann import parse_memory

        parse_memory(self.index_memory)
        for root in self.image_roots:
            need(os.path.isdir(root), f"image_roots: {root} is not a folder")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)
