"""CLIP parity with transformers' CLIPModel (get_image_features / get_text_features, normalised) on tiny random
checkpoints: current and older hub layouts, older config.json forms, padding and batching edge cases."""

import numpy as np
import pytest
import torch

import encoders
from images import TEXTS, mixed_batch
from reference import assert_matches_reference, dual_encoder_reference
from tiny_clip import EXTRA_TOKEN, PROJECTION_DIM

# lengths 1..past the limit in one padded batch, an empty text, CJK, and the end-of-text marker inside a text
MORE_TEXTS = TEXTS + ["cat", "  spaces\tand\nnewlines  ", "中英mixed 文本 text", "a <|endoftext|> b c d e",
                      "don't STOP: it's 12345", "a photo of " + "a cat " * 6, f"an {EXTRA_TOKEN} added token"]


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """{variant: checkpoint dir}: current and legacy layouts, the old config forms, laion-style "!" padding and
    gelu (laion) towers."""
    from hub_layout import to_legacy_layout
    from tiny_clip import make_tiny_clip, with_legacy_config, with_old_eos

    current, slow = make_tiny_clip(tmp_path_factory.mktemp("clip") / "ckpt")
    legacy = to_legacy_layout(current, tmp_path_factory.mktemp("clip_legacy"), slow_tokenizer_files=slow)
    laion, laion_slow = make_tiny_clip(tmp_path_factory.mktemp("clip_laion") / "ckpt", seed=1, hidden_act="gelu",
                                       pad_token="!")
    return {"current": current, "legacy": legacy,
            "legacy_config": with_legacy_config(legacy, tmp_path_factory.mktemp("clip_cfg") / "ckpt"),
            "old_eos": with_old_eos(current, tmp_path_factory.mktemp("clip_eos") / "ckpt"),
            "laion": laion,
            "laion_legacy": to_legacy_layout(laion, tmp_path_factory.mktemp("clip_laion_legacy"),
                                             slow_tokenizer_files=laion_slow)}


def reference(ckpt_dir, images, texts):
    from transformers import CLIPModel, CLIPProcessor

    return dual_encoder_reference(CLIPModel, CLIPProcessor, ckpt_dir, images, texts)


@pytest.mark.parametrize("variant", ["current", "legacy", "legacy_config", "old_eos", "laion", "laion_legacy"])
def test_clip_matches_transformers(variant, clip_dirs):
    ckpt = clip_dirs[variant]
    images = mixed_batch()
    enc = encoders.load(str(ckpt))
    assert enc.family == "clip"
    assert_matches_reference(enc, "clip", PROJECTION_DIM, images, MORE_TEXTS, *reference(ckpt, images, MORE_TEXTS))


def test_clip_old_eos_pools_at_largest_id(clip_dirs):
    """With eos_token_id=2 the pooled position is argmax(input_ids): at an added token whose id is above
    <|endoftext|>, not at the end of the text. Both configs match transformers (above), and they differ here."""
    texts = [f"a {EXTRA_TOKEN} b c", "a b c"]
    enc = encoders.load(str(clip_dirs["current"]))
    ids = enc.tokenizer(texts).input_ids[0].tolist()
    assert enc.tokenizer.token_to_id(EXTRA_TOKEN) in ids
    assert max(ids) == enc.tokenizer.token_to_id(EXTRA_TOKEN) > enc.tokenizer.token_to_id("<|endoftext|>")
    new, old = enc.encode_texts(texts), encoders.load(str(clip_dirs["old_eos"])).encode_texts(texts)
    assert np.abs(new[0] - old[0]).max() > 1e-3
    np.testing.assert_allclose(new[1], old[1], atol=1e-6)  # without the added token both pool at the end


@pytest.mark.parametrize("variant", ["current", "laion"])
def test_clip_padding_and_batching_do_not_change_results(variant, clip_dirs):
    enc = encoders.load(str(clip_dirs[variant]))
    alone = np.concatenate([enc.encode_texts([t]) for t in MORE_TEXTS])
    np.testing.assert_allclose(enc.encode_texts(MORE_TEXTS), alone, atol=1e-5)
    enc.text_batch = 3  # chunks with their own padding widths
    np.testing.assert_allclose(enc.encode_texts(MORE_TEXTS), alone, atol=1e-5)
    # a text past the 16-token limit is truncated, keeping its end-of-text token, like transformers
    ids = enc.tokenizer(["a photo of " + "a cat " * 20]).input_ids
    assert ids.shape[1] == 16 and int(ids[0, -1]) == enc.tokenizer.token_to_id("<|endoftext|>")
    images = mixed_batch()
    whole = enc.encode_images(images)
    enc.image_batch = 2
    np.testing.assert_allclose(enc.encode_images(images), whole, atol=1e-5)
    assert enc.encode_images([]).shape == (0, PROJECTION_DIM)
    assert enc.encode_texts([]).shape == (0, PROJECTION_DIM)


def test_clip_bf16_close_to_fp32(clip_dirs):
    images = mixed_batch()
    fp32 = encoders.load(str(clip_dirs["current"]))
    bf16 = encoders.load(str(clip_dirs["current"]), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    for a, b in ((fp32.encode_images(images), bf16.encode_images(images)),
                 (fp32.encode_texts(MORE_TEXTS), bf16.encode_texts(MORE_TEXTS))):
        assert b.dtype == np.float32
        assert (a * b).sum(axis=1).min() >= 0.98
