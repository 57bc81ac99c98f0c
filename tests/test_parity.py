"""Golden-output parity with the original InternVL2 implementation (shared fixtures).

Both tiny checkpoints are in the ORIGINAL remote-code layout; they load through our native
converter and must reproduce the recorded features, hidden states, logits and greedy tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from humanaes.models.expert.checkpoint import load_original
from humanaes.models.expert.generation import Decoding
from humanaes.models.expert.prompts import ANSWER_PREFIX, build_prompt, get_template
from humanaes.models.expert.scorer import HumanAesScorer, positions_from_mask
from humanaes.models.expert.tokenization import load_tokenizer

ATOL = 1e-4
VARIANTS = ["tiny_qwen2", "tiny_internlm2"]


@pytest.fixture(scope="module", params=VARIANTS)
def case(request, fixtures_dir):
    folder = fixtures_dir / request.param
    model, config = load_original(folder, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = load_tokenizer(folder)
    return {
        "name": request.param,
        "model": model,
        "config": config,
        "tokenizer": tokenizer,
        "scorer": HumanAesScorer(model, tokenizer),
        "ref": load_file(folder / "reference.safetensors"),
        "meta": json.loads((folder / "reference.json").read_text(encoding="utf-8")),
        "pixels": load_file(fixtures_dir / "preprocess" / "pixel_values.safetensors"),
    }


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("key,pixels", [("astronaut_max6", "astronaut.max6"), ("grace_hopper_max1", "grace_hopper.max1"), ("wide_max6", "wide.max6")])
def test_vision_features(case, key, pixels):
    features = case["model"].extract_image_features(case["pixels"][pixels])
    assert features.shape == case["ref"][f"vision.{key}.features"].shape
    assert _max_err(features, case["ref"][f"vision.{key}.features"]) <= ATOL


@torch.no_grad()
def test_vit_hidden_state_and_pixel_shuffle(case):
    from humanaes.models.expert.modeling import pixel_shuffle_v2

    model, ref = case["model"], case["ref"]
    vit = model.vision_model(pixel_values=case["pixels"]["astronaut.max6"]).last_hidden_state
    assert _max_err(vit, ref["vision.astronaut_max6.vit_last_hidden_state"]) <= ATOL
    shuffled = pixel_shuffle_v2(vit[:, 1:].reshape(1, 32, 32, -1))
    assert _max_err(shuffled, ref["vision.astronaut_max6.pixel_shuffled"]) <= ATOL


def test_prompt_tokens_match_chat(case):
    meta, ref, tokenizer = case["meta"], case["ref"], case["tokenizer"]
    template = get_template(case["config"].template)
    prompt = build_prompt(template, meta["cases"]["single"]["question"], 1, 256)
    assert prompt == meta["cases"]["single"]["query_exact"]
    assert tokenizer(prompt).input_ids == ref["single.input_ids"][0].tolist()
    answer = tokenizer(prompt + ANSWER_PREFIX).input_ids
    assert answer == ref["answer_prefix.input_ids"][0].tolist()
    # the scorer's compact tokenisation (one image token, expanded) gives the same ids
    ids, pool = case["scorer"].prompt_ids(meta["cases"]["single"]["question"], True).expand(256, case["scorer"].img_context_id)
    assert ids == answer
    assert pool == len(ref["single.input_ids"][0]) - 1


@torch.no_grad()
def test_single_logits_and_hidden_states(case):
    model, ref = case["model"], case["ref"]
    img = case["scorer"].img_context_id
    features = model.extract_image_features(case["pixels"]["astronaut.max6"])
    embeds = model.embed(ref["single.input_ids"], features, img)
    out = model.run_llm(embeds, attention_mask=ref["single.attention_mask"], output_hidden_states=True)
    assert _max_err(model.lm_logits(out.hidden_states), ref["single.logits"]) <= ATOL
    hidden = ref["single.hidden_states"]
    assert _max_err(out.all_hidden_states[0], hidden[0]) <= ATOL  # embeddings with the image spliced in
    assert _max_err(out.all_hidden_states[1], hidden[1]) <= ATOL
    assert _max_err(out.hidden_states, hidden[2]) <= ATOL  # final norm applied
    # answer prefix: where the level word is predicted
    embeds = model.embed(ref["answer_prefix.input_ids"], features, img)
    out = model.run_llm(embeds, attention_mask=ref["answer_prefix.attention_mask"])
    assert _max_err(model.lm_logits(out.hidden_states), ref["answer_prefix.logits"]) <= ATOL


@torch.no_grad()
def test_batched_left_padded_logits(case):
    model, ref = case["model"], case["ref"]
    features = model.extract_image_features(torch.cat([case["pixels"]["grace_hopper.max1"], case["pixels"]["wide.max6"]]))
    mask = ref["batch.attention_mask"]
    embeds = model.embed(ref["batch.input_ids"], features, case["scorer"].img_context_id)
    out = model.run_llm(embeds, attention_mask=mask, position_ids=positions_from_mask(mask))
    real = mask.bool()
    assert _max_err(model.lm_logits(out.hidden_states)[real], ref["batch.logits"][real]) <= ATOL
    assert _max_err(out.hidden_states[real], ref["batch.last_hidden_state"][real]) <= ATOL


@torch.no_grad()
@pytest.mark.parametrize("which", ["single", "batch"])
def test_greedy_generation(case, which):
    model, ref, scorer = case["model"], case["ref"], case["scorer"]
    if which == "single":
        pixels = case["pixels"]["astronaut.max6"]
    else:
        pixels = torch.cat([case["pixels"]["grace_hopper.max1"], case["pixels"]["wide.max6"]])
    ids, mask = ref[f"{which}.input_ids"], ref[f"{which}.attention_mask"]
    features = model.extract_image_features(pixels)
    embeds, positions = model.embed(ids, features, scorer.img_context_id), positions_from_mask(mask)
    out = model.run_llm(embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    step0 = model.lm_logits(out.hidden_states[:, -1])
    assert _max_err(step0, ref[f"{which}.generate.scores"][0]) <= ATOL
    # transformers' generate() from the prompt pass's cache, greedy as chat()
    tokens = scorer.generate(embeds, mask, Decoding(max_new_tokens=8), prompt_cache=out.cache)
    assert tokens == ref[f"{which}.generate.sequences"].tolist()
