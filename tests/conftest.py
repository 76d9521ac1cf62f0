"""Shared test setup: no network, deterministic threads, tiny checkpoints built at test time."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    """A tiny random SigLIP saved by transformers' save_pretrained (current layout)."""
    from tiny_checkpoints import make_tiny_siglip

    return make_tiny_siglip(tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="session")
def tiny_blip_dirs(tmp_path_factory):
    """Tiny random BLIP checkpoints: (retrieval: ITC + ITM, captioning)."""
    from tiny_blip import make_tiny_blip

    root = tmp_path_factory.mktemp("blip")
    return make_tiny_blip(root / "itm", "retrieval")[0], make_tiny_blip(root / "cap", "captioning")[0]


@pytest.fixture(scope="session")
def tiny_siglip_legacy_dir(tiny_siglip_dir, tmp_path_factory):
    """The same checkpoint rewritten into the older hub layout (preprocessor_config.json, pytorch_model.bin)."""
    from hub_layout import to_legacy_layout

    return to_legacy_layout(tiny_siglip_dir, tmp_path_factory.mktemp("siglip_legacy"))


from ray_cluster import ray_cluster  # noqa: E402,F401  (a fixture: one Ray cluster per session, for every module)
