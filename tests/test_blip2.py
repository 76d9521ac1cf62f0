"""BLIP-2 parity with transformers: ITM probabilities, greedy and beam captions with OPT and T5 language
models, tokenizers; tiny random checkpoints in the current and the legacy hub layout."""

import functools

import numpy as np
import pytest
import torch

import encoders
from mmsearch.errors import CheckpointError, InvalidInput
from images import TEXTS, mixed_batch

PROMPT = "Question: what is shown? Answer:"
LANGUAGE_MODELS = ["opt", "flan-t5", "t5"]


def _with_legacy(tmp_path_factory, name, make):
    from hub_layout import to_legacy_layout

    current, slow_files = make(tmp_path_factory.mktemp(name) / "ckpt")
    legacy = to_legacy_layout(current, tmp_path_factory.mktemp(name + "_legacy"), slow_tokenizer_files=slow_files)
    return {"current": current, "legacy": legacy}


@pytest.fixture(scope="module")
def itm_dirs(tmp_path_factory):
    from tiny_blip2 import make_tiny_blip2_itm

    return _with_legacy(tmp_path_factory, "blip2_itm", make_tiny_blip2_itm)


@pytest.fixture(scope="module")
def caption_dirs(tmp_path_factory):
    from tiny_blip2 import make_tiny_blip2_opt, make_tiny_blip2_t5

    return {"opt": _with_legacy(tmp_path_factory, "blip2_opt", make_tiny_blip2_opt),
            "flan-t5": _with_legacy(tmp_path_factory, "blip2_flan_t5", lambda p: make_tiny_blip2_t5(p, gated=True)),
            "t5": _with_legacy(tmp_path_factory, "blip2_t5", lambda p: make_tiny_blip2_t5(p, gated=False))}


def reference_itm(ckpt_dir, images, texts):
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    model = Blip2ForImageTextRetrieval.from_pretrained(ckpt_dir).eval()
    processor = Blip2Processor.from_pretrained(ckpt_dir)
    inputs = processor(images=images, text=texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs, use_image_text_matching_head=True).logits_per_image
    return logits.softmax(dim=-1)[:, 1].numpy()


@functools.lru_cache(maxsize=None)
def _reference_captioner(ckpt_dir):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    return Blip2ForConditionalGeneration.from_pretrained(ckpt_dir).eval(), Blip2Processor.from_pretrained(ckpt_dir)


@functools.lru_cache(maxsize=None)
def reference_captions(ckpt_dir, prompt, num_beams, max_new_tokens=12):
    """transformers' ids for mixed_batch() (image placeholders dropped, padding after eos dropped) and decoded
    captions (computed once per checkpoint and setting: both layouts compare with them)."""
    model, processor = _reference_captioner(ckpt_dir)
    images = mixed_batch()
    # T5 has no bos, so transformers 5 cannot caption without text; the empty prompt is what LAVIS feeds
    text = prompt if prompt is not None or model.config.use_decoder_only_language_model else ""
    inputs = processor(images=images, text=None if text is None else [text] * len(images), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams)
    captions = processor.batch_decode(out, skip_special_tokens=True)
    eos = model.config.text_config.eos_token_id
    decoder_only = model.config.use_decoder_only_language_model
    # decoder-only: rows start with the model input (placeholders + bos + prompt); T5: the decoder start
    prompt_len = (inputs["input_ids"].shape[1] if "input_ids" in inputs else model.config.num_query_tokens + 1) \
        if decoder_only else 1
    skip = model.config.num_query_tokens if decoder_only else 0
    ids = []
    for row in out.tolist():
        generated = row[prompt_len:]
        if eos in generated:
            generated = generated[:generated.index(eos) + 1]
        ids.append(row[skip:prompt_len] + generated)
    return ids, captions


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_itm_probabilities_match_transformers(layout, itm_dirs):
    images = mixed_batch()
    images = images + images[:1]  # 6 pairs; the first image appears twice (its image side is reused)
    ref = reference_itm(itm_dirs["current"], images, TEXTS)
    rr = encoders.load_reranker(str(itm_dirs[layout]))
    assert rr.family == "blip2"
    probs = rr.score(images, TEXTS)
    assert probs.dtype == np.float32 and probs.shape == (len(TEXTS),)
    assert np.abs(probs - ref).max() <= 1e-4
    assert probs.std() > 1e-3  # the pairs are told apart

    # one image against many texts: the same as that image repeated
    single = rr.score(images[:1], TEXTS)
    np.testing.assert_allclose(single, reference_itm(itm_dirs["current"], images[:1] * len(TEXTS), TEXTS), atol=1e-4)
    rr.batch_size = 4  # batching does not change results
    np.testing.assert_allclose(rr.score(images, TEXTS), probs, atol=1e-5)
    assert rr.score([], []).shape == (0,)
    with pytest.raises(InvalidInput):
        rr.score(images[:2], TEXTS[:3])


@pytest.mark.parametrize("layout", ["current", "legacy"])
@pytest.mark.parametrize("lm", LANGUAGE_MODELS)
def test_captions_match_transformers(lm, layout, caption_dirs):
    images = mixed_batch()
    cap = encoders.load_captioner(str(caption_dirs[lm][layout]))
    assert cap.model.lm_type == ("opt" if lm == "opt" else "t5")
    cap.batch_size = 3  # batched over images, in two chunks
    for prompt in (None, PROMPT):
        for num_beams in (1, 3):
            ref_ids, ref_captions = reference_captions(str(caption_dirs[lm]["current"]), prompt, num_beams)
            ours = cap.generate_ids(images, prompt=prompt, max_new_tokens=12, num_beams=num_beams)
            assert ours == ref_ids, (prompt, num_beams)
            assert cap.caption(images, prompt=prompt, max_new_tokens=12, num_beams=num_beams) == ref_captions


def test_captions_depend_on_the_image(caption_dirs):
    cap = encoders.load_captioner(str(caption_dirs["flan-t5"]["current"]))
    assert len(set(cap.caption(mixed_batch(), max_new_tokens=8))) > 1


@pytest.mark.parametrize("lm", ["opt", "flan-t5"])
def test_tokenizers_match_transformers(lm, caption_dirs, itm_dirs):
    from transformers import AutoTokenizer

    from encoders.tokenize import load_tokenizer

    texts = [t for t in TEXTS if len(t) < 100] + [PROMPT, "  two  spaces\tand tab", "<extra_id_0> sentinel"]
    for dirs in (caption_dirs[lm], itm_dirs):
        ref = AutoTokenizer.from_pretrained(dirs["current"])
        for layout in ("current", "legacy"):
            ours = load_tokenizer(dirs[layout], default_max_length=512)
            for text in texts:
                assert ours.encode(text) == ref(text).input_ids, (layout, text)
            ids = ref(PROMPT + " a cat").input_ids
            assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_bf16_close_to_fp32(itm_dirs, caption_dirs):
    images = mixed_batch()
    fp32 = encoders.load_reranker(str(itm_dirs["current"]))
    bf16 = encoders.load_reranker(str(itm_dirs["current"]), dtype="bfloat16")
    assert bf16.model.vision.pos_embed.dtype == torch.bfloat16
    assert bf16.model.qformer.norm.weight.dtype == torch.float32  # the Q-Former stays in float32
    assert np.abs(bf16.score(images, TEXTS[:5]) - fp32.score(images, TEXTS[:5])).max() < 0.05
    cap = encoders.load_captioner(str(caption_dirs["opt"]["current"]), dtype="bfloat16")
    assert len(cap.caption(images[:2], max_new_tokens=5)) == 2


def test_wrong_checkpoint_kind_is_a_clear_error(itm_dirs, caption_dirs):
    with pytest.raises(CheckpointError, match="load_reranker"):
        encoders.load_captioner(str(itm_dirs["current"]))
    with pytest.raises(CheckpointError, match="text input"):
        encoders.load_reranker(str(caption_dirs["opt"]["current"]))
    cap = encoders.load_captioner(str(caption_dirs["opt"]["current"]))
    with pytest.raises(InvalidInput):
        cap.caption(mixed_batch()[:1], num_beams=0)


# ---------------------------------------------------------------------------------------------------
# Prompted answers ("Question: {q} Answer:", the model cards' VQA prompt)

QUESTIONS = ("what is shown?", "how many cats are there in this photo?", "", "is the circle red or blue?", "a?")


@functools.lru_cache(maxsize=None)
def reference_answers(ckpt_dir, questions, num_beams, max_new_tokens=12):
    """transformers' generated ids (up to eos) and decoded answers for mixed_batch() with one question each.
    Decoder-only OPT needs a left-padded batch (right padding would generate after pad tokens); T5's encoder
    takes the processor's right padding with its mask."""
    model, processor = _reference_captioner(ckpt_dir)
    decoder_only = model.config.use_decoder_only_language_model
    prompts = [f"Question: {q} Answer:" for q in questions]
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left" if decoder_only else "right"
    try:
        inputs = processor(images=mixed_batch(), text=prompts, padding=True, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams)
    eos = model.config.text_config.eos_token_id
    skip = inputs["input_ids"].shape[1] if decoder_only else 1
    ids = []
    for row in out.tolist():
        generated = row[skip:]
        ids.append(generated[:generated.index(eos) + 1] if eos in generated else generated)
    return ids, [processor.tokenizer.decode(g, skip_special_tokens=True).strip() for g in ids]


@pytest.mark.parametrize("layout", ["current", "legacy"])
@pytest.mark.parametrize("lm", ["opt", "flan-t5"])
def test_answers_match_transformers(lm, layout, caption_dirs):
    images = mixed_batch()
    ans = encoders.load_answerer(str(caption_dirs[lm][layout]))
    assert ans.family == "blip2"
    ans.batch_size = 3  # in two chunks
    for num_beams in (1, 3):
        ref_ids, ref_answers = reference_answers(str(caption_dirs[lm]["current"]), QUESTIONS, num_beams)
        assert ans.answer_ids(images, list(QUESTIONS), max_new_tokens=12, num_beams=num_beams) == ref_ids, num_beams
        assert ans.answer(images, list(QUESTIONS), max_new_tokens=12, num_beams=num_beams) == ref_answers
    assert len({len(ids) for ids in ref_ids}) > 1 or len(set(ref_answers)) > 1


def test_answers_one_image_many_questions(caption_dirs):
    ans = encoders.load_answerer(str(caption_dirs["opt"]["current"]))
    image = mixed_batch()[0]
    questions = list(QUESTIONS)
    assert ans.answer([image], questions) == ans.answer([image] * len(questions), questions)
    # each question is answered as if alone (prompts of one length run together, unpadded)
    alone = [ans.answer([image], [q])[0] for q in questions]
    assert ans.answer([image], questions) == alone
    assert ans.answer([], []) == []


def test_answerer_errors(itm_dirs, caption_dirs):
    with pytest.raises(CheckpointError, match="load_reranker"):
        encoders.load_answerer(str(itm_dirs["current"]))
    ans = encoders.load_answerer(str(caption_dirs["flan-t5"]["current"]))
    with pytest.raises(InvalidInput, match="one image per question"):
        ans.answer(mixed_batch()[:2], ["a?", "b?", "c?"])
    with pytest.raises(InvalidInput, match="questions must be strings"):
        ans.answer(mixed_batch()[:1], [None])
    with pytest.raises(InvalidInput, match="num_beams"):
        ans.answer(mixed_batch()[:1], ["a?"], num_beams=0)
