"""Regenerate the Python modules for the mmsearch protos.

    python -m protos.generate            # rewrite protos/mmsearch/v1/*_pb2*.py(i) in place
    python -m protos.generate --check    # exit 1 if the committed files are stale

Needs grpcio-tools (a test dependency). The proto is compiled with `protos/` as the include root so its
descriptor name stays `mmsearch/v1/search.proto` (what grpcurl and reflection show); the one absolute
import protoc writes into the *_grpc module is rewritten as a relative import so the generated modules
work from inside the `protos` package.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTO_FILES = ["mmsearch/v1/search.proto"]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generated_names(proto: str) -> list[str]:
    stem = proto[: -len(".proto")]
    return [stem + suffix for suffix in GENERATED_SUFFIXES]


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into `out_dir` (mirroring the package layout); return the written files."""
    from importlib.resources import files

    from grpc_tools import protoc

    well_known = str(files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in PROTO_FILES:
        args = ["protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}", proto]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {ROOT / proto}")
    written = []
    for proto in PROTO_FILES:
        package = proto.rsplit("/", 1)[0].replace("/", ".")
        for name in _generated_names(proto):
            path = out_dir / name
            if name.endswith("_pb2_grpc.py"):
                text = path.read_text()
                text = text.replace(f"from {package} import ", "from . import ")
                path.write_text(text)
            written.append(path)
    return written


def stale_files() -> list[str]:
    """Generated files whose committed content differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            rel = path.relative_to(tmp)
            committed = ROOT / rel
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                stale.append(str(committed))
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale generated files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path} (run: python -m protos.generate)", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(ROOT):
        print(path.relative_to(ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
