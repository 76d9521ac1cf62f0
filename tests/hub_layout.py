"""Rewrite a checkpoint saved by transformers 5 into the older hub layout that real snapshots have:
`preprocessor_config.json` (flat) instead of `processor_config.json`, `special_tokens_map.json`,
the slow tokenizer files instead of `tokenizer.json`, and `pytorch_model.bin` instead of safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file


def to_legacy_layout(src: Path, dst: Path, slow_tokenizer_files: dict[str, Path] | None = None,
                     weights: str = "bin") -> Path:
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    if (src / "generation_config.json").is_file():
        shutil.copy(src / "generation_config.json", dst / "generation_config.json")

    state = {}
    for shard in sorted(src.glob("*.safetensors")):
        state.update(load_file(shard))
    if weights == "bin":
        torch.save(state, dst / "pytorch_model.bin")
    else:
        shutil.copy(src / "model.safetensors", dst / "model.safetensors")

    processor = json.loads((src / "processor_config.json").read_text()) if (src / "processor_config.json").is_file() else {}
    image_cfg = processor.pop("image_processor", None)
    if image_cfg is None and (src / "preprocessor_config.json").is_file():
        image_cfg = json.loads((src / "preprocessor_config.json").read_text())
    if image_cfg is not None:
        if processor.get("processor_class"):
            image_cfg["processor_class"] = processor["processor_class"]
        (dst / "preprocessor_config.json").write_text(json.dumps(image_cfg, indent=2))

    tok_cfg = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    specials = {k: v for k, v in tok_cfg.items() if k.endswith("_token") and isinstance(v, (str, dict))}
    if specials:
        (dst / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    legacy_cfg = {k: v for k, v in tok_cfg.items() if k not in ("added_tokens_decoder", "backend")}
    if tok_cfg:
        (dst / "tokenizer_config.json").write_text(json.dumps(legacy_cfg, indent=2))
    for name in ("spiece.model", "sentencepiece.bpe.model", "vocab.txt", "vocab.json", "merges.txt"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    for name, path in (slow_tokenizer_files or {}).items():
        shutil.copy(path, dst / name)
    return dst
