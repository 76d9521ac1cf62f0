"""BLIP parity with transformers (ITC features, ITM probabilities, greedy and beam captions, VQA answers) on
both checkpoint layouts, plus the BERT WordPiece tokenizer and the checkpoint-kind errors."""

import numpy as np
import pytest
import torch

import encoders
from mmsearch.errors import CheckpointError, InvalidInput
from images import TEXTS, mixed_batch, random_image

MAX_LENGTH = 40  # the tiny tokenizer's model_max_length (= max_position_embeddings)


@pytest.fixture(scope="module")
def blip_dirs(tmp_path_factory):
    """{(kind, layout): checkpoint dir} for kind in retrieval/captioning/vqa, layout in current/legacy."""
    from hub_layout import to_legacy_layout
    from tiny_blip import legacy_slow_files, make_tiny_blip

    dirs = {}
    for kind in ("retrieval", "captioning", "vqa"):
        current, vocab = make_tiny_blip(tmp_path_factory.mktemp("blip") / kind, kind)
        dirs[kind, "current"] = current
        dirs[kind, "legacy"] = to_legacy_layout(current, tmp_path_factory.mktemp(f"blip_{kind}_legacy"),
                                                slow_tokenizer_files=legacy_slow_files(vocab, current))
    return dirs


@pytest.fixture(scope="module")
def reference_retrieval(blip_dirs):
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    path = blip_dirs["retrieval", "current"]
    return BlipForImageTextRetrieval.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def reference_captioning(blip_dirs):
    from transformers import AutoProcessor, BlipForConditionalGeneration

    path = blip_dirs["captioning", "current"]
    return BlipForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def reference_tokens(processor, texts):
    return processor(text=texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")


LAYOUTS = ["current", "legacy"]
# texts of many lengths in one padded batch
MANY_TEXTS = TEXTS + [f"a photo of {' '.join(['a cat'] * i)}" for i in range(1, 12)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_blip_tokenizer_matches_transformers(layout, blip_dirs, reference_retrieval):
    _, processor = reference_retrieval
    enc = encoders.load(str(blip_dirs["retrieval", layout]))
    texts = TEXTS + ["[DEC] a photo of [ENC] a cat", "A  Photo\tof\nTHE dog", "no-vocab-word zzzq"]
    ref = reference_tokens(processor, texts)
    ours = enc.tokenizer(texts)
    np.testing.assert_array_equal(ours.input_ids.numpy(), ref["input_ids"].numpy())
    np.testing.assert_array_equal(ours.attention_mask.numpy(), ref["attention_mask"].numpy())
    for row in ref["input_ids"].tolist():
        assert enc.tokenizer.decode(row) == processor.decode(row, skip_special_tokens=True)
    assert enc.tokenizer.token_to_id("[DEC]") == processor.tokenizer.bos_token_id
    assert enc.tokenizer.token_to_id("[ENC]") == processor.tokenizer.convert_tokens_to_ids("[ENC]")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_blip_dual_encoder_matches_transformers(layout, blip_dirs, reference_retrieval):
    model, processor = reference_retrieval
    images = mixed_batch()
    with torch.no_grad():
        image_tokens = model.vision_model(**processor(images=images, return_tensors="pt")).last_hidden_state
        ref_img = torch.nn.functional.normalize(model.vision_proj(image_tokens[:, 0]), dim=-1).numpy()
        tok = reference_tokens(processor, MANY_TEXTS)
        text_tokens = model.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        ref_txt = torch.nn.functional.normalize(model.text_proj(text_tokens[:, 0]), dim=-1).numpy()

    enc = encoders.load(str(blip_dirs["retrieval", layout]))
    assert (enc.family, enc.dim) == ("blip", 16)
    img, txt = enc.encode_images(images), enc.encode_texts(MANY_TEXTS)
    assert img.dtype == np.float32 and img.shape == (len(images), 16) and txt.shape == (len(MANY_TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    assert np.abs(img - ref_img).max() <= 1e-4
    assert np.abs(txt - ref_txt).max() <= 1e-4
    assert enc.encode_texts([]).shape == (0, 16)


def reference_itm(model, processor, images, texts):
    tok = reference_tokens(processor, texts)
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                    pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
    return out.itm_score.softmax(dim=-1)[:, 1].numpy()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_blip_itm_matches_transformers(layout, blip_dirs, reference_retrieval):
    model, processor = reference_retrieval
    images = mixed_batch()
    images = (images * 4)[:len(MANY_TEXTS)]
    texts = MANY_TEXTS
    ref = reference_itm(model, processor, images, texts)
    assert ref.std() > 1e-3  # the tiny model must tell pairs apart, or the comparison proves little
    rr = encoders.load_reranker(str(blip_dirs["retrieval", layout]))
    probs = rr.score(images, texts)
    assert probs.dtype == np.float32 and probs.shape == (len(texts),)
    assert np.abs(probs - ref).max() <= 1e-4
    assert rr.score([], []).shape == (0,)
    with pytest.raises(InvalidInput, match="as many images as texts"):
        rr.score(images[:2], texts[:3])


def test_blip_itm_one_image_many_texts_equals_pairwise(blip_dirs, reference_retrieval):
    model, processor = reference_retrieval
    rr = encoders.load_reranker(str(blip_dirs["retrieval", "current"]))
    image = random_image(50, 40, seed=7)
    pairwise = np.array([rr.score([image], [t])[0] for t in TEXTS], np.float32)
    shared = rr.score([image] * len(TEXTS), TEXTS)
    np.testing.assert_allclose(shared, pairwise, atol=1e-6)
    np.testing.assert_allclose(rr.score_texts(image, TEXTS), pairwise, atol=1e-6)
    assert np.abs(shared - reference_itm(model, processor, [image] * len(TEXTS), TEXTS)).max() <= 1e-4

    images = mixed_batch()
    one_text = np.array([rr.score([im], ["a red circle"])[0] for im in images], np.float32)
    np.testing.assert_allclose(rr.score_images(images, "a red circle"), one_text, atol=1e-6)
    # interleaved duplicates, split across chunks, come back in the caller's order
    rr.pair_batch = 3
    mixed_images = [images[0], image, images[0], images[1], image, images[1], images[0]]
    mixed_texts = [TEXTS[i % len(TEXTS)] for i in range(len(mixed_images))]
    expected = np.array([rr.score([im], [t])[0] for im, t in zip(mixed_images, mixed_texts)], np.float32)
    np.testing.assert_allclose(rr.score(mixed_images, mixed_texts), expected, atol=1e-6)


def reference_captions(model, processor, images, prompt, num_beams, max_new_tokens):
    inputs = processor(images=images, text=[prompt] * len(images) if prompt else None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams)
    return out, processor.batch_decode(out, skip_special_tokens=True)


def strip_padding(row: list[int], eos: int, pad: int) -> list[int]:
    if eos in row:
        return row[: row.index(eos) + 1]
    while row and row[-1] == pad:
        row = row[:-1]
    return row


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("prompt", [None, "a photo of"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_blip_captions_match_transformers(layout, prompt, num_beams, blip_dirs, reference_captioning):
    from encoders.blip import BlipDecodeState
    from encoders.generate import generate

    model, processor = reference_captioning
    images = mixed_batch()
    ref_ids, ref_text = reference_captions(model, processor, images, prompt, num_beams, max_new_tokens=12)
    cap = encoders.load_captioner(str(blip_dirs["captioning", layout]))
    assert cap.caption(images, prompt=prompt, max_new_tokens=12, num_beams=num_beams) == ref_text
    if prompt:
        assert all(text.startswith(prompt) for text in ref_text)
    # token-identical, not just the same text
    with torch.no_grad():
        pixels = cap.image_preprocessor(images)
        state = BlipDecodeState(cap.model, cap.model.vision(pixels))
        prompt_ids = torch.tensor([cap.prompt_ids(prompt)] * len(images))
        ours = generate(state, prompt_ids, eos_id=cap.eos_id, pad_id=cap.pad_id, max_new_tokens=12,
                        num_beams=num_beams)
    sep, pad = model.config.text_config.sep_token_id, model.config.text_config.pad_token_id
    assert ours == [strip_padding(row, sep, pad) for row in ref_ids.tolist()]


def test_blip_captions_stop_early_and_batch(blip_dirs, reference_captioning):
    model, processor = reference_captioning
    images = mixed_batch() + [random_image(70, 20, seed=s) for s in (11, 12, 13)]
    ref_ids, ref_text = reference_captions(model, processor, images, None, 1, max_new_tokens=20)
    sep = model.config.text_config.sep_token_id
    lengths = [len(strip_padding(row, sep, -1)) for row in ref_ids.tolist()]
    assert min(lengths) < max(lengths)  # some captions end at [SEP] before others: the stop path is exercised
    cap = encoders.load_captioner(str(blip_dirs["captioning", "current"]))
    cap.image_batch = 3
    assert cap.caption(images, max_new_tokens=20) == ref_text
    assert cap.caption([]) == []
    with pytest.raises(InvalidInput):
        cap.caption(images, num_beams=0)


def test_blip_checkpoint_kinds_are_checked(blip_dirs):
    with pytest.raises(CheckpointError, match="captioning model.*load_captioner"):
        encoders.load(str(blip_dirs["captioning", "current"]))
    with pytest.raises(CheckpointError, match="captioning model"):
        encoders.load_reranker(str(blip_dirs["captioning", "legacy"]))
    with pytest.raises(CheckpointError, match="retrieval model.*load_reranker"):
        encoders.load_captioner(str(blip_dirs["retrieval", "current"]))


def test_blip_bf16_close_to_fp32(blip_dirs):
    images = mixed_batch()
    path = str(blip_dirs["retrieval", "current"])
    fp32, bf16 = encoders.load(path), encoders.load(path, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    for a, b in ((fp32.encode_images(images), bf16.encode_images(images)),
                 (fp32.encode_texts(TEXTS), bf16.encode_texts(TEXTS))):
        assert b.dtype == np.float32
        assert (a * b).sum(axis=1).min() >= 0.99
    pair_images = (images + images)[:len(TEXTS)]
    p32 = encoders.load_reranker(path).score(pair_images, TEXTS)
    p16 = encoders.load_reranker(path, dtype="bfloat16").score(pair_images, TEXTS)
    assert np.abs(p32 - p16).max() <= 2e-2
    captions = encoders.load_captioner(str(blip_dirs["captioning", "current"]), dtype="bfloat16").caption(images)
    assert len(captions) == len(images) and all(isinstance(c, str) for c in captions)


# ---------------------------------------------------------------------------------------------------
# Visual question answering (BlipForQuestionAnswering)

QUESTIONS = ["what is this?", "how many cats are on the sofa in this picture?", "", "is it red",
             "a red circle on a white background?"]


@pytest.fixture(scope="module")
def reference_vqa(blip_dirs):
    from transformers import AutoProcessor, BlipForQuestionAnswering

    path = blip_dirs["vqa", "current"]
    return BlipForQuestionAnswering.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def reference_answers(model, processor, images, questions, num_beams, max_new_tokens):
    inputs = processor(images=images, text=questions, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams)
    return out, processor.batch_decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_blip_answers_match_transformers(layout, num_beams, blip_dirs, reference_vqa):
    """Token-identical to BlipForQuestionAnswering.generate on a batch of images and questions of different
    lengths (padded together, as the processor pads them)."""
    model, processor = reference_vqa
    images = mixed_batch()
    ref_ids, ref_text = reference_answers(model, processor, images, QUESTIONS, num_beams, max_new_tokens=12)
    ans = encoders.load_answerer(str(blip_dirs["vqa", layout]))
    assert ans.family == "blip"
    sep, pad = model.config.text_config.sep_token_id, model.config.text_config.pad_token_id
    assert ans.answer_ids(images, QUESTIONS, max_new_tokens=12, num_beams=num_beams) == \
        [strip_padding(row, sep, pad) for row in ref_ids.tolist()]
    assert ans.answer(images, QUESTIONS, max_new_tokens=12, num_beams=num_beams) == ref_text
    if num_beams == 1:
        lengths = [len(strip_padding(row, sep, -1)) for row in ref_ids.tolist()]
        assert min(lengths) < max(lengths)  # some answers end at [SEP] first: the stop path is exercised
        assert len(set(ref_text)) > 1  # answers depend on the image and the question


def test_blip_answers_one_image_many_questions(blip_dirs, reference_vqa):
    model, processor = reference_vqa
    image = random_image(60, 45, seed=9)
    _, ref_text = reference_answers(model, processor, [image] * len(QUESTIONS), QUESTIONS, 1, max_new_tokens=10)
    ans = encoders.load_answerer(str(blip_dirs["vqa", "current"]))
    assert ans.answer([image], QUESTIONS, max_new_tokens=10) == ref_text
    assert ans.answer([image] * len(QUESTIONS), QUESTIONS, max_new_tokens=10) == ref_text
    # questions of one token length: chunking cannot change the padding, so answers do not change
    same_length = ["a red cat", "a red dog", "a red fox"]
    assert len({len(ans.tokenizer.encode(q)) for q in same_length}) == 1
    whole = ans.answer([image, random_image(30, 30, seed=1), image], same_length, max_new_tokens=10)
    ans.image_batch = 1
    assert ans.answer([image, random_image(30, 30, seed=1), image], same_length, max_new_tokens=10) == whole
    assert ans.answer([], []) == []


def test_blip_answerer_refuses_bad_input(blip_dirs):
    ans = encoders.load_answerer(str(blip_dirs["vqa", "current"]))
    images = mixed_batch()
    with pytest.raises(InvalidInput, match="one image per question"):
        ans.answer(images[:2], QUESTIONS[:3])
    with pytest.raises(InvalidInput, match="questions must be strings"):
        ans.answer(images[:1], [b"bytes?"])
    with pytest.raises(InvalidInput, match="images must be PIL images"):
        ans.answer(["cat.jpg"], ["what is it?"])
    for bad in ({"num_beams": 0}, {"max_new_tokens": 0}, {"num_beams": 99}, {"max_new_tokens": 2.5}):
        with pytest.raises(InvalidInput):
            ans.answer(images[:1], ["what is it?"], **bad)


def test_blip_answerer_kinds_are_checked(blip_dirs):
    with pytest.raises(CheckpointError, match="question answering model.*load_answerer"):
        encoders.load_captioner(str(blip_dirs["vqa", "current"]))
    with pytest.raises(CheckpointError, match="question answering model.*load_answerer"):
        encoders.load(str(blip_dirs["vqa", "legacy"]))
    with pytest.raises(CheckpointError, match="captioning model.*load_captioner"):
        encoders.load_answerer(str(blip_dirs["captioning", "current"]))
    with pytest.raises(CheckpointError, match="retrieval model"):
        encoders.load_answerer(str(blip_dirs["retrieval", "current"]))


def test_blip_answerer_bf16(blip_dirs):
    ans = encoders.load_answerer(str(blip_dirs["vqa", "current"]), dtype="bfloat16")
    assert next(ans.model.parameters()).dtype == torch.bfloat16
    answers = ans.answer(mixed_batch(), QUESTIONS, max_new_tokens=5, num_beams=2)
    assert len(answers) == len(QUESTIONS) and all(isinstance(a, str) for a in answers)

