"""Tests with teeth (issue 12, must 6): each test here fails under one specific, plausible bug
that the rest of the suite lets through.

(a) two expert dimensions swapped in the head's output      -> test_expert_*_maps_outputs_to_names
(b) metavoter mode as two full passes (no shared prefix)     -> test_metavoter_*_once
(c) a fitted MetaVoter ignored for the mean of the heads     -> test_fit_metavoter_*, test_fitted_metavoter_*
(d) the bundled model fed BGR instead of RGB                 -> test_bundled_float32_golden_scores_on_examples
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.nn import functional as F

import humanaes
from humanaes.models.expert.prompts import common_prefix_length, expert_answer, parse_expert_answer
from humanaes.models.heads import ExpertHead, MetaVoter
from humanaes.models.mini.modeling import ExpertHead as MiniExpertHead
from humanaes.schema import DIMENSIONS
from humanaes.training.metavoter import fit_metavoter

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# -- (a) expert dimensions by name -----------------------------------------------------------

# The release's expert_head1 rows, written out by name (reference section 3), NOT taken from
# humanaes.schema: a swap there must not be able to hide behind the test's own constants.
LEAF_ROWS = (
    "Facial Brightness", "Facial Feature Clarity", "Facial Skin Tone", "Facial Structure",
    "Facial Contour Clarity", "Outfit", "Body Shape", "Looks", "Environment",
)
# Distinct leaf values spread over all five levels, so a swap of any two leaves changes a level too
# where their levels differ (Outfit "bad" vs Body Shape "excellent").
LEAF_VALUES = {
    "Facial Brightness": 0.31, "Facial Feature Clarity": 0.52, "Facial Skin Tone": 0.68,
    "Facial Structure": 0.85, "Facial Contour Clarity": 0.12, "Outfit": 0.07,
    "Body Shape": 0.93, "Looks": 0.44, "Environment": 0.76,
}
EXPECTED_LEVELS = {
    "Facial Brightness": "poor", "Facial Feature Clarity": "fair", "Facial Skin Tone": "good",
    "Facial Structure": "excellent", "Facial Contour Clarity": "bad", "Outfit": "bad",
    "Body Shape": "excellent", "Looks": "fair", "Environment": "good",
}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _parent_layers(net: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """(first, last) Linear of a parent FFN, whichever family's head it belongs to."""
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    return linears[0], linears[-1]


def _craft_expert_head(head: torch.nn.Module, seed: int = 3) -> None:
    """Leaves: constant outputs LEAF_VALUES (zero weights, bias = logit); parents: seeded random
    FFNs whose first layer weighs each child differently, so a child routed to the wrong parent
    (or in the wrong order) changes the parent's value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.expert_head1.weight.zero_()
        head.expert_head1.bias.copy_(torch.tensor([_logit(LEAF_VALUES[n]) for n in LEAF_ROWS]))
        for k in (2, 3, 4):
            first, last = _parent_layers(getattr(head, f"expert_head{k}"))
            first.weight.copy_(torch.randn(first.weight.shape, generator=g))
            first.bias.copy_(torch.randn(first.bias.shape, generator=g) * 0.1)
            last.weight.copy_(torch.randn(last.weight.shape, generator=g))
            last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.1)


def _expected_expert(head: torch.nn.Module) -> dict[str, float]:
    """The twelve scores computed by hand from the crafted weights, routed by dimension name."""
    pre = {n: _logit(v) for n, v in LEAF_VALUES.items()}

    def parent(k: int, children: list[str]) -> float:
        first, last = _parent_layers(getattr(head, f"expert_head{k}"))
        x = torch.tensor([[pre[c] for c in children]])
        with torch.no_grad():
            return float(F.linear(F.gelu(F.linear(x, first.weight, first.bias)), last.weight, last.bias))

    pre["Facial Aesthetic Score"] = parent(2, list(LEAF_ROWS[:5]))
    pre["General Appearance Aesthetic Score"] = parent(3, ["Outfit", "Body Shape", "Looks"])
    pre["Comprehensive Aesthetic Score"] = parent(
        4, ["Facial Aesthetic Score", "General Appearance Aesthetic Score", "Environment"]
    )
    return {n: 1 / (1 + math.exp(-v)) for n, v in pre.items()}


@pytest.mark.parametrize("head_class", [ExpertHead, MiniExpertHead], ids=["expert", "mini"])
def test_expert_head_maps_outputs_to_names(head_class):
    head = head_class(16)
    _craft_expert_head(head)
    out = head(torch.randn(2, 16))[0].tolist()
    expected = _expected_expert(head)
    assert dict(zip(DIMENSIONS, out)) == pytest.approx(expected, abs=1e-6)
    assert [out[DIMENSIONS.index(n)] for n in ("Outfit", "Body Shape")] == pytest.approx([0.07, 0.93], abs=1e-6)


def test_expert_scores_and_levels_by_name_through_the_scorer():
    """End to end: crafted head weights in humanaes-tiny -> ScoreResult.expert / expert_levels by
    name -> the twelve-line expert text in the reference order."""
    scorer = humanaes.load("humanaes-tiny", device="cpu", dtype="float32")
    _craft_expert_head(scorer.model.expert_head)
    expected = _expected_expert(scorer.model.expert_head)
    r = scorer.score([Image.new("RGB", (320, 240), (180, 120, 90))], mode="expert", max_tiles=1)[0]
    assert r.error is None
    assert list(r.expert) == list(DIMENSIONS)
    assert r.expert == pytest.approx(expected, abs=1e-5)
    assert r.expert["Outfit"] == pytest.approx(0.07, abs=1e-6) and r.expert["Body Shape"] == pytest.approx(0.93, abs=1e-6)
    for name, level in EXPECTED_LEVELS.items():
        assert r.expert_levels[name] == level, name
    assert r.overall == r.expert["Comprehensive Aesthetic Score"]

    lines = expert_answer([r.expert[n] for n in DIMENSIONS]).splitlines()
    assert len(lines) == 12
    assert lines[6] == "7. Outfit : bad" and lines[7] == "8. Body Shape : excellent"
    assert lines[0] == "1. Facial Brightness : poor" and lines[9] == "10. Environment : good"
    assert parse_expert_answer("\n".join(lines)) == r.expert_levels


# -- (b) metavoter mode: one vision pass, the shared prefix once --------------------------------


class _Counter:
    """Forward hooks counting vision-encoder calls and the new (unpadded) LLM tokens per call."""

    def __init__(self, model, img_context_id: int):
        self.vision_calls = 0
        self.llm_calls: list[dict[str, int]] = []
        self._img = img_context_id
        self._handles = [
            model.vision_model.register_forward_hook(self._on_vision),
            model.language_model.model.register_forward_pre_hook(self._on_llm, with_kwargs=True),
        ]
        self._pending_image_tokens = 0
        self._embed = model.embed
        model.embed = self._on_embed  # instance attribute: removed again in close()
        self._model = model

    def _on_vision(self, *_):
        self.vision_calls += 1

    def _on_embed(self, input_ids, image_features, img_context_id):
        self._pending_image_tokens = int((input_ids == self._img).sum())
        return self._embed(input_ids, image_features, img_context_id)

    def _on_llm(self, _module, _args, kwargs):
        embeds, mask = kwargs["inputs_embeds"], kwargs["attention_mask"]
        width = embeds.shape[1]
        self.llm_calls.append({
            "rows": embeds.shape[0],
            "new_tokens": int(mask[:, -width:].sum()),
            "image_tokens": self._pending_image_tokens,
        })
        self._pending_image_tokens = 0

    def close(self):
        for h in self._handles:
            h.remove()
        del self._model.embed


@pytest.fixture(scope="module")
def tiny():
    return humanaes.load("humanaes-tiny", device="cpu", dtype="float32")


@pytest.mark.parametrize("batch_size", [3, 2])
def test_metavoter_encodes_each_image_once_and_the_prefix_once(tiny, batch_size, monkeypatch):
    monkeypatch.setattr(tiny.model, "vision_chunk_tiles", 64)  # one encoder call per batch
    images = [Image.new("RGB", (640, 480), (200, 120, 90)), Image.new("RGB", (300, 500), (20, 60, 90)),
              Image.new("RGB", (448, 448), (90, 200, 30))]
    general = tiny.prompt_ids(tiny.general_question, True)
    expert = tiny.prompt_ids(tiny.expert_question, False)
    shared = common_prefix_length(general.ids, expert.ids)
    g_suffix, e_suffix = len(general.ids) - shared, len(expert.ids) - shared
    assert shared > general.image_slot and g_suffix > 0 and e_suffix > 0

    tokens_per_tile = tiny.model.extract_image_features(torch.zeros(1, 3, 448, 448)).shape[1]
    n_tiles = [tiny.prepare(im, max_tiles=2).shape[0] for im in images]
    n_image_tokens = [t * tokens_per_tile for t in n_tiles]

    counter = _Counter(tiny.model, tiny.img_context_id)
    try:
        results = tiny.score(images, mode="metavoter", max_tiles=2, batch_size=batch_size)
    finally:
        counter.close()
    assert all(r.error is None and r.metavoter_score is not None for r in results)

    batches = [list(range(len(images)))[i:i + batch_size] for i in range(0, len(images), batch_size)]
    assert counter.vision_calls == len(batches)
    expected_calls = []
    for batch in batches:
        # the prefix (system + image block) of every image once, then both questions' suffixes
        expected_calls.append({"rows": len(batch), "new_tokens": sum(shared + n_image_tokens[i] - 1 for i in batch),
                               "image_tokens": sum(n_image_tokens[i] for i in batch)})
        expected_calls.append({"rows": 2 * len(batch), "new_tokens": len(batch) * (g_suffix + e_suffix), "image_tokens": 0})
    assert counter.llm_calls == expected_calls
    # what the official two full passes would process, for scale: strictly more
    two_passes = sum(len(general.ids) + len(expert.ids) + 2 * (n - 1) for n in n_image_tokens)
    assert sum(c["new_tokens"] for c in counter.llm_calls) < two_passes


# -- (c) a fitted MetaVoter is used ------------------------------------------------------------


def _synthetic_heads(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head scores (lm, regression, expert) and a target that only the regression head predicts,
    compressed into [0.05, 0.35]: the mean of the heads is wrong in scale and in ranking."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    y = 0.05 + 0.3 * x[:, 1]
    return x, y


def _new_voter(kind: str, seed: int = 0) -> MetaVoter:
    """A MetaVoter with seeded initial weights, leaving the global generator as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MetaVoter(kind, 16)


def test_fit_metavoter_learns_what_the_mean_cannot():
    x, y = _synthetic_heads(200, seed=0)
    voter = _new_voter("mlp")
    rng_before = torch.random.get_rng_state()
    report = fit_metavoter(voter, x, y, steps=600, lr=0.02, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert bool(voter.fitted)
    assert report["rows"] == 200 and report["validation_rows"] == 40
    val = report["validation"]
    assert set(val) == {"metavoter", "lm", "regression", "expert", "mean_of_heads"}
    assert val["metavoter"]["plcc"] > 0.99 and val["metavoter"]["rmse"] < 0.02
    assert val["mean_of_heads"]["plcc"] < 0.8 and val["mean_of_heads"]["rmse"] > 0.15
    assert val["regression"]["plcc"] == pytest.approx(1.0, abs=1e-6)  # y is a linear map of it
    assert report["train"]["rmse"] < 0.02
    x_new, y_new = _synthetic_heads(50, seed=1)
    with torch.no_grad():
        pred = voter(x_new)
    assert float((pred - y_new).abs().max()) < 0.05
    assert float((x_new.mean(-1) - y_new).abs().mean()) > 0.2  # the mean is far off

    again = _new_voter("mlp")
    fit_metavoter(again, x, y, steps=600, lr=0.02, seed=0)
    for a, b in zip(voter.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # seeded: the same fit twice

    few = _new_voter("linear")
    small = fit_metavoter(few, x[:6], y[:6], steps=50, seed=0)
    assert small["validation_rows"] == 0 and "validation" not in small and bool(few.fitted)


def test_fitted_metavoter_survives_save_and_load_and_scores(tmp_path):
    scorer = humanaes.load("humanaes-tiny", device="cpu", dtype="float32")
    x, y = _synthetic_heads(200, seed=0)
    voter = scorer.model.metavoter
    fit_metavoter(voter, x, y, steps=600, lr=0.02, seed=0)
    scorer.model.config.metavoter.fitted = True
    path = humanaes.save_checkpoint(scorer.model, tmp_path / "fitted", tokenizer=scorer.tokenizer)

    again = humanaes.load(path, device="cpu", dtype="float32")
    assert again.describe()["metavoter_fitted"] is True
    image = Image.new("RGB", (640, 480), (200, 120, 90))
    r = again.score([image], mode="metavoter", max_tiles=2)[0]
    assert r.error is None and r.extra["metavoter_fitted"] is True
    heads = torch.tensor([[r.lm_score, r.regression_score, r.expert["Comprehensive Aesthetic Score"]]])
    with torch.no_grad():
        by_hand = float(torch.sigmoid(voter.net(heads)).squeeze())
    mean = float(heads.mean())
    assert r.metavoter_score == pytest.approx(by_hand, abs=1e-6)
    assert r.metavoter_score == pytest.approx(0.05 + 0.3 * r.regression_score, abs=0.02)  # what it learnt
    assert abs(r.metavoter_score - mean) > 0.2
    assert r.overall == r.metavoter_score
    # golden: humanaes-tiny is seeded and the fit is seeded
    assert (r.lm_score, r.regression_score) == pytest.approx(GOLDEN_TINY_HEADS, abs=1e-5)
    assert r.metavoter_score == pytest.approx(GOLDEN_TINY_METAVOTER, abs=1e-4)


# humanaes-tiny (seeded) on the flat test picture, max_tiles=2, and the seeded fit above.
GOLDEN_TINY_HEADS = (0.48634248971939087, 0.622586190700531)
GOLDEN_TINY_METAVOTER = 0.2403426617383957  # the mean of the heads would be 0.5576


# -- (d) the bundled model sees RGB ------------------------------------------------------------

# float32 scores of the shipped humanaes-mini on the shipped examples (overall; whole-picture and
# face branches). A BGR feed moves them by far more than the tolerance.
GOLDEN_BUNDLED = {
    "astronaut.png": (0.5553333759307861, 0.5486994385719299, 0.5619673728942871),
    "grace_hopper.jpg": (0.3411785364151001, 0.3768673539161682, 0.305489718914032),
}


def test_bundled_float32_golden_scores_on_examples():
    scorer = humanaes.load(None, dtype="float32")
    names = sorted(GOLDEN_BUNDLED)
    for batch_size in (1, 2):
        results = scorer.score([EXAMPLES / n for n in names], batch_size=batch_size)
        for name, r in zip(names, results):
            assert r.error is None and r.person_found is True, name
            got = (r.overall, r.extra["whole_image_score"], r.extra["face_score"])
            assert got == pytest.approx(GOLDEN_BUNDLED[name], abs=1e-5), name


def test_golden_tolerance_is_far_below_a_bgr_feed():
    """The pinned tolerance must be able to see a colour-order bug: scoring the channel-swapped
    pictures (what a BGR feed computes) moves the scores by well over it."""
    scorer = humanaes.load(None, dtype="float32")
    names = sorted(GOLDEN_BUNDLED)
    swapped = [Image.merge("RGB", Image.open(EXAMPLES / n).convert("RGB").split()[::-1]) for n in names]
    for name, r in zip(names, scorer.score(swapped)):
        assert r.error is None
        # measured: 0.063 (astronaut, whose face the detector then misses) and 0.043 (grace_hopper)
        assert abs(r.overall - GOLDEN_BUNDLED[name][0]) > 0.02, name

