"""The demo: synthetic ground truth, the shipped model, and a reduced end-to-end run whose recall@10 means
something (images -> bulk indexer -> SQLite + FAISS -> gRPC server -> client -> scored against labels).

If indexing and query time preprocess images differently, or FAISS ids and catalog rows get out of step,
test_reduced_demo_recall fails: recall@10 falls to chance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search.demo import run as demo_run
from search.demo import shapes, train

REDUCED_IMAGES = 600


def test_labels_and_images_are_deterministic():
    a = shapes.render(shapes.label_for(shapes.DEMO_SPACE, 7), shapes.DEMO_SPACE, 7)
    b = shapes.render(shapes.label_for(shapes.DEMO_SPACE, 7), shapes.DEMO_SPACE, 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    label = shapes.label_for(shapes.DEMO_SPACE, 7)
    assert a.size == (label.width, label.height)
    # training and the demo draw from different seed spaces
    assert shapes.label_for(shapes.TRAIN_SPACE, 7) != label or not np.array_equal(
        np.asarray(shapes.render(shapes.label_for(shapes.TRAIN_SPACE, 7), shapes.TRAIN_SPACE, 7)), np.asarray(a))


def test_shapes_are_drawn_in_their_colour_on_their_background():
    for i in range(30):
        label = shapes.label_for(shapes.DEMO_SPACE, i)
        arr = np.asarray(shapes.render(label, shapes.DEMO_SPACE, i), np.float32)
        target = np.asarray(shapes.COLOURS[label.colour], np.float32)
        near = np.abs(arr - target).max(axis=2) < 60
        assert near.mean() > 0.02, (i, label)  # the shapes cover a visible share of the image
        lo, hi = shapes.BACKGROUNDS[label.background]
        corner_grey = np.median(arr[:3, :3].mean(axis=2)) if not near[:3, :3].any() else None
        if corner_grey is not None:
            assert lo - 45 <= corner_grey <= hi + 45, (i, label, corner_grey)


def test_recall_at_k_definition():
    labels = {f"{i}": shapes.label_for(shapes.DEMO_SPACE, i) for i in range(600)}
    query = shapes.QUERIES[0]
    relevant = [u for u, lab in labels.items() if query.relevant(lab)]
    other = [u for u in labels if u not in relevant]
    assert len(relevant) >= 10
    assert shapes.recall_at_k(relevant[:10], query, labels) == 1.0
    assert shapes.recall_at_k(relevant[:3] + other[:7], query, labels) == pytest.approx(0.3)
    # fewer relevant images than k: finding all of them is a recall of 1
    few = shapes.Query("x", "count", query.shape, query.colour, count=1, background="white", size="small")
    few_relevant = [u for u, lab in labels.items() if few.relevant(lab)]
    assert 0 < len(few_relevant) < 10
    assert shapes.recall_at_k(other[:10 - len(few_relevant)] + few_relevant, few, labels) == 1.0


def test_captions_fit_the_text_tower_and_say_the_truth():
    import encoders

    enc = encoders.load(demo_run.MODEL_DIR)
    rng = np.random.default_rng(0)
    for i in range(200):
        label = shapes.label_for(shapes.TRAIN_SPACE, i)
        caption = shapes.caption_for(label, rng)
        assert caption.matches(label)
        assert len(enc.tokenizer.encode(caption.text, 1000)) <= 16, caption.text
    assert all(len(enc.tokenizer.encode(q.text, 1000)) <= 16 for q in shapes.QUERIES)


def test_shipped_model_is_a_hugging_face_siglip_checkpoint():
    """transformers (the reference) loads the shipped files and agrees with encoders.load."""
    import torch
    from transformers import SiglipModel, SiglipTokenizer

    import encoders

    model_dir = demo_run.MODEL_DIR
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "siglip"
    assert (model_dir / "model.safetensors").stat().st_size < 8 * 1024 * 1024
    enc = encoders.load(model_dir)
    ref = SiglipModel.from_pretrained(model_dir).eval()
    tok = SiglipTokenizer.from_pretrained(model_dir)
    texts = [q.text for q in shapes.QUERIES[:5]]
    ids = tok(texts, padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert torch.equal(ids, enc.tokenizer(texts).input_ids)
    with torch.inference_mode():
        want = ref.get_text_features(input_ids=ids)
        want = getattr(want, "pooler_output", want)
        want = torch.nn.functional.normalize(want, dim=-1).numpy()
    assert np.abs(enc.encode_texts(texts) - want).max() <= 1e-4


def test_training_is_seeded(tmp_path):
    """Two short runs of the training script write identical files; the vocabulary is the shipped one."""
    import sentencepiece as spm

    def pieces(directory):  # the .model file also records the training paths, so compare its vocabulary
        sp = spm.SentencePieceProcessor(model_file=str(directory / "spiece.model"))
        return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]

    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        stages = tuple(train.Stage(stage.name, 2, stage.lr) for stage in train.STAGES)
        train.train(out, stages=stages, batch=16, pool=32, seed=0, threads=1, eval_images=0)
        runs.append({"weights": (out / "model.safetensors").read_bytes(), "vocab": pieces(out),
                     "config": (out / "config.json").read_bytes()})
    assert runs[0] == runs[1]
    assert runs[0]["vocab"] == pieces(demo_run.MODEL_DIR)
    assert runs[0]["config"] == (demo_run.MODEL_DIR / "config.json").read_bytes()


# The shipped model's numbers on this reduced run are deterministic (fixed weights, fixed images, exact
# FAISS search): colour+shape 0.99, all queries 0.955. The floors are the demo's goal for colour+shape and a
# little under the measured mean; a broken pipeline gives chance (~0.03), a colour-only model ~0.2.
COLOUR_SHAPE_FLOOR = 0.9
ALL_FLOOR = 0.85


def test_reduced_demo_recall(tmp_path):
    """The demo on 600 fresh images (never trained on): index with the bulk indexer (one decode worker),
    serve over gRPC, query with the client, score against the ground truth."""
    lines: list[str] = []
    result = demo_run.run_demo(tmp_path, n_images=REDUCED_IMAGES, show=3, workers=1, progress=False,
                               out=lines.append)
    report = "\n".join(lines)
    print(report)
    colour_shape = result.mean("colour+shape", by_example=False)
    assert len(result.queries) == len(shapes.QUERIES) + len(demo_run.EXAMPLES), report  # all were scored
    assert colour_shape >= COLOUR_SHAPE_FLOOR, f"colour+shape recall@10 {colour_shape:.3f}\n{report}"
    assert result.mean() >= ALL_FLOOR, f"mean recall@10 {result.mean():.3f}\n{report}"
