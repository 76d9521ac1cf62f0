"""The `mmsearch` command.

Each subcommand is a `cmd_<name>(args) -> int` function registered in `build_parser`. User errors
(`encoders.errors.MMSearchError`) end the command with one line on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from encoders.errors import MMSearchError


def default_data_dir() -> str:
    return os.environ.get("MMSEARCH_DATA", "./mmsearch-data")


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    import encoders
    from encoders.preprocess import load_image

    if not args.text and not args.image:
        raise encoders.errors.InvalidInput("embed: give at least one --text or --image")
    enc = encoders.load(args.model, device=args.device, dtype=args.dtype)
    rows: list[tuple[str, str, np.ndarray]] = []
    if args.text:
        for text, vec in zip(args.text, enc.encode_texts(args.text)):
            rows.append(("text", text, vec))
    if args.image:
        images = [load_image(path) for path in args.image]
        for path, vec in zip(args.image, enc.encode_images(images)):
            rows.append(("image", path, vec))
    if args.json:
        out = {"model": enc.name, "family": enc.family, "dim": enc.dim,
               "vectors": [{"kind": k, "input": s, "vector": [round(float(x), 7) for x in v]} for k, s, v in rows]}
        print(json.dumps(out, ensure_ascii=False))
    else:
        for kind, source, vec in rows:
            head = " ".join(f"{x:+.4f}" for x in vec[:8])
            print(f"{kind}\t{source}\tdim={vec.shape[0]}\t[{head} ...]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description="Multimodal embedding search and retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="print embedding vectors for texts and images")
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    p.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    p.add_argument("--json", action="store_true", help="print full vectors as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16 (CUDA)")
    p.set_defaults(func=cmd_embed)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MMSearchError as exc:
        print(f"mmsearch {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"mmsearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
