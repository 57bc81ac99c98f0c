"""The heads shared by both model families (humanaes.models.heads) and humanaes-mini's rename
of the tensor names its files had before the heads were shared (humanaes.models.mini.weights).

Expected values are computed here by hand, in plain Python, from the tree of reference section
2.1 and the dimension order of section 3, both written out by name below (not taken from
humanaes.schema, so that a mistake there cannot hide behind the test's own constants).
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from humanaes.errors import CheckpointError
from humanaes.models.heads import ExpertHead, MetaVoter, RegressionHead
from humanaes.models.mini import HumanAesMini, MiniConfig, load_bundled, load_model, save_bundled
from humanaes.models.mini.weights import FORMAT_VERSION, LEGACY_HEAD_KEYS

# Reference section 3, in order.
DIMENSION_NAMES = (
    "Facial Brightness", "Facial Feature Clarity", "Facial Skin Tone", "Facial Structure",
    "Facial Contour Clarity", "Facial Aesthetic Score", "Outfit", "Body Shape", "Looks",
    "Environment", "General Appearance Aesthetic Score", "Comprehensive Aesthetic Score",
)
# Reference section 2.1: expert_head1's nine rows, then the parents' children in order.
LEAF_ROWS = (
    "Facial Brightness", "Facial Feature Clarity", "Facial Skin Tone", "Facial Structure",
    "Facial Contour Clarity", "Outfit", "Body Shape", "Looks", "Environment",
)
PARENTS = (  # (module, parent, children)
    ("expert_head2", "Facial Aesthetic Score", LEAF_ROWS[:5]),
    ("expert_head3", "General Appearance Aesthetic Score", ("Outfit", "Body Shape", "Looks")),
    ("expert_head4", "Comprehensive Aesthetic Score",
     ("Facial Aesthetic Score", "General Appearance Aesthetic Score", "Environment")),
)
ALL_HEADS = ["regression", "expert", "metavoter"]


# -- plain-Python arithmetic ------------------------------------------------------------------


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def gelu(v: float) -> float:  # exact (erf) GELU, torch's default
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


def linear(layer: nn.Linear, x: list[float]) -> list[float]:
    w, b = layer.weight.tolist(), layer.bias.tolist()
    return [bias + sum(wi * xi for wi, xi in zip(row, x)) for row, bias in zip(w, b)]


def ffn(first: nn.Linear, last: nn.Linear, x: list[float]) -> float:
    return linear(last, [gelu(v) for v in linear(first, x)])[0]


def seeded_(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Every parameter drawn from one seeded normal (biases too, so none stays at its init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def expert_by_hand(head: ExpertHead, x: list[float]) -> dict[str, float]:
    pre = dict(zip(LEAF_ROWS, linear(head.expert_head1, x)))
    for module, parent, children in PARENTS:
        net = getattr(head, module)
        pre[parent] = ffn(net.fc1, net.fc2, [pre[c] for c in children])
    return {name: sigmoid(v) for name, v in pre.items()}


# -- one golden test per head class -----------------------------------------------------------

X = [[0.5, -1.0, 2.0, 0.25, -0.75, 1.5], [-0.3, 0.8, 0.1, -1.2, 0.6, -0.4]]


def test_regression_head_golden():
    head = seeded_(RegressionHead(6), seed=0)
    out = head(torch.tensor(X)).tolist()
    assert out == pytest.approx([sigmoid(linear(head.linear, x)[0]) for x in X], abs=1e-6)
    assert out == pytest.approx([0.0174177, 0.2167059], abs=1e-6)


def test_expert_head_golden():
    head = seeded_(ExpertHead(6, parent_hidden=4), seed=1, scale=0.5)
    out = head(torch.tensor(X))
    assert out.shape == (2, 12)
    for row, x in zip(out.tolist(), X):
        assert dict(zip(DIMENSION_NAMES, row)) == pytest.approx(expert_by_hand(head, x), abs=1e-6)
    assert out[0].tolist() == pytest.approx(GOLDEN_EXPERT_ROW0, abs=1e-6)


GOLDEN_EXPERT_ROW0 = [
    0.3263445, 0.7497060, 0.1923388, 0.9115724, 0.0665964, 0.4683307,
    0.8032098, 0.7290419, 0.8755258, 0.6515585, 0.8369095, 0.1739670,
]


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_metavoter_golden_three_inputs(kind):
    """HumanAesExpert's MetaVoter: the mean of (LM, regression, expert overall) until fitted, then
    sigmoid(net); `fitted` is part of its state dict (our checkpoints and official ones use it)."""
    voter = seeded_(MetaVoter(kind, 4), seed=2)
    scores = [[0.2, 0.7, 0.9], [0.55, 0.1, 0.4]]
    assert voter(torch.tensor(scores)).tolist() == pytest.approx([sum(s) / 3 for s in scores], abs=1e-7)
    voter.fitted.fill_(True)
    if kind == "mlp":
        by_hand = [sigmoid(ffn(voter.net[0], voter.net[2], s)) for s in scores]
    else:
        by_hand = [sigmoid(linear(voter.net[0], s)[0]) for s in scores]
    out = voter(torch.tensor(scores)).tolist()
    assert out == pytest.approx(by_hand, abs=1e-6)
    assert out == pytest.approx(GOLDEN_METAVOTER[kind], abs=1e-6)
    assert "fitted" in voter.state_dict()
    again = MetaVoter(kind, 4)
    again.load_state_dict(voter.state_dict())
    assert bool(again.fitted) and again(torch.tensor(scores)).tolist() == out


GOLDEN_METAVOTER = {"mlp": [0.4450905, 0.4862623], "linear": [0.1721276, 0.2424250]}


def test_metavoter_golden_two_inputs_fitted_by_config():
    """humanaes-mini's MetaVoter: (regression, expert overall); fitted is the config's word,
    kept out of the state dict."""
    scores = [[0.2, 0.9], [0.6, 0.3]]
    fitted = seeded_(MetaVoter("mlp", 4, num_inputs=2, fitted=True), seed=3)
    out = fitted(torch.tensor(scores)).tolist()
    assert out == pytest.approx([sigmoid(ffn(fitted.net[0], fitted.net[2], s)) for s in scores], abs=1e-6)
    assert out == pytest.approx([0.7103692, 0.7633809], abs=1e-6)
    unfitted = MetaVoter("mlp", 4, num_inputs=2, fitted=False)
    unfitted.load_state_dict(fitted.state_dict())
    assert unfitted(torch.tensor(scores)).tolist() == pytest.approx([0.55, 0.45], abs=1e-7)
    assert "fitted" not in fitted.state_dict()
    with pytest.raises(ValueError, match="fuses 2 scores, got 3"):
        fitted(torch.tensor([[0.1, 0.2, 0.3]]))
    for heads, expected in ((ALL_HEADS, True), (["regression", "expert"], False), (["regression"], False)):
        model = HumanAesMini(MiniConfig(input_size=64, trained_heads=heads))
        assert bool(model.metavoter.fitted) is expected and model.metavoter.num_inputs == 2
        assert not any(k.startswith("metavoter.fitted") for k in model.state_dict())


# -- expert dimensions by name, through the mini family -----------------------------------------

LEAF_VALUES = {  # distinct values; Outfit and Body Shape far apart
    "Facial Brightness": 0.31, "Facial Feature Clarity": 0.52, "Facial Skin Tone": 0.68,
    "Facial Structure": 0.85, "Facial Contour Clarity": 0.12, "Outfit": 0.07,
    "Body Shape": 0.93, "Looks": 0.44, "Environment": 0.76,
}


def test_mini_expert_scores_reach_the_result_by_name(tmp_path):
    """Crafted leaves (zero weights, bias = logit of a known value) in a humanaes-mini checkpoint
    with a trained expert head: ScoreResult.expert carries each value under its own name, and
    the parents are the reference's tree over the right children (a swap of Outfit and Body
    Shape anywhere on the way, in the head or in the scorer, fails here)."""
    torch.manual_seed(0)
    model = HumanAesMini(MiniConfig(input_size=64, trained_heads=ALL_HEADS)).eval()
    head = model.expert_head
    seeded_(head, seed=4)
    with torch.no_grad():
        head.expert_head1.weight.zero_()
        head.expert_head1.bias.copy_(torch.tensor([math.log(LEAF_VALUES[n] / (1 - LEAF_VALUES[n])) for n in LEAF_ROWS]))
    save_bundled(model, tmp_path)
    result = load_bundled(path=tmp_path, dtype="float32").score(Image.new("RGB", (80, 64), (90, 60, 30)), mode="expert")[0]
    assert result.error is None and list(result.expert) == list(DIMENSION_NAMES)
    assert result.expert == pytest.approx(expert_by_hand(head, [0.0] * head.expert_head1.in_features), abs=1e-6)
    assert (result.expert["Outfit"], result.expert["Body Shape"]) == pytest.approx((0.07, 0.93), abs=1e-6)
    assert result.overall == result.expert["Comprehensive Aesthetic Score"]


# -- humanaes-mini files written before the heads were shared -----------------------------------


class OldExpertHead(nn.Module):
    """The mini family's own expert head before issue 12, rebuilt here as it was (parents as
    Sequential(Linear, GELU, Linear); outputs concatenated in section 3's order)."""

    def __init__(self, dim: int, hidden: int = 16):
        super().__init__()
        self.expert_head1 = nn.Linear(dim, 9)
        self.expert_head2 = nn.Sequential(nn.Linear(5, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.expert_head3 = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.expert_head4 = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        leaves = self.expert_head1(feature)
        face, appearance, env = leaves[:, 0:5], leaves[:, 5:8], leaves[:, 8:9]
        face_parent, appearance_parent = self.expert_head2(face), self.expert_head3(appearance)
        overall = self.expert_head4(torch.cat([face_parent, appearance_parent, env], dim=1))
        return torch.sigmoid(torch.cat([face, face_parent, appearance, env, appearance_parent, overall], dim=1))


class OldMiniHeads(nn.Module):
    """The old heads' module tree: its state-dict keys are the old file's key names."""

    def __init__(self, dim: int = 1280):
        super().__init__()
        self.regression_head = nn.Linear(dim, 1)
        self.expert_head = OldExpertHead(dim)
        self.metavoter = nn.Module()
        self.metavoter.net = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, 1))

    def forward(self, feature: torch.Tensor) -> dict[str, torch.Tensor]:
        regression = torch.sigmoid(self.regression_head(feature)).squeeze(1)
        expert = self.expert_head(feature)
        metavoter = torch.sigmoid(self.metavoter.net(torch.stack([regression, expert[:, 11]], dim=1))).squeeze(1)
        return {"regression": regression, "expert": expert, "metavoter": metavoter}


def write_legacy(directory: Path, state: dict[str, torch.Tensor], config: MiniConfig, version: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "humanaes-mini.safetensors"))
    meta = {"name": "humanaes-mini", "format": "humanaes-mini", "format_version": version, "config": config.to_dict()}
    (directory / "humanaes-mini.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture(scope="module")
def legacy():
    """(config, the old heads with seeded weights, a complete old-layout state dict)."""
    torch.manual_seed(0)
    config = MiniConfig(input_size=64, dropout=0.0, trained_heads=ALL_HEADS)
    backbone = {k: v for k, v in HumanAesMini(config).state_dict().items() if k.startswith("backbone.")}
    old = seeded_(OldMiniHeads(), seed=5, scale=0.05).eval()
    return config, old, {**backbone, **old.state_dict()}


def test_old_mini_file_loads_into_the_shared_heads_with_identical_outputs(tmp_path, legacy):
    config, old, state = legacy
    assert "regression_head.weight" in state and "expert_head.expert_head2.0.weight" in state
    model, meta = load_model(write_legacy(tmp_path / "old", state, config))
    x = torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    with torch.no_grad():
        got = model(x)
        want = old(model.features(x))
    for name in ("regression", "expert", "metavoter"):
        assert torch.equal(got[name], want[name]), name
    # saved again, it is a current-format file with the shared heads' names and the same outputs
    save_bundled(model, tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "humanaes-mini.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 3
    with safe_open(str(tmp_path / "new" / "humanaes-mini.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"regression_head.linear.weight", "expert_head.expert_head4.fc2.bias"} <= keys
    assert not keys & set(LEGACY_HEAD_KEYS) and "metavoter.fitted" not in keys
    again, _ = load_model(tmp_path / "new")
    with torch.no_grad():
        assert torch.equal(again(x)["metavoter"], got["metavoter"])


def test_the_shipped_model_is_an_old_format_file_renamed_on_load():
    """The packaged weights keep their old names (and their checksum, which batch jobs record), so
    every scoring run with the bundled model (and its golden tests) goes through the rename."""
    model, meta = load_model()
    assert meta["format_version"] == 2
    with resources.as_file(resources.files("humanaes.models.mini") / "humanaes-mini.safetensors") as path:
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
    assert {"members.0.regression_head.weight", "members.1.expert_head.expert_head2.0.weight"} <= keys
    renamed = {re.sub(r"(expert_head[234])\.2\.", r"\1.fc2.", re.sub(r"(expert_head[234])\.0\.", r"\1.fc1.",
               k.replace("regression_head.", "regression_head.linear."))) for k in keys}
    assert set(model.state_dict()) == renamed


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s.update({"expert_head.expert_head5.0.weight": torch.zeros(16, 3)}), "unexpected"),
        (lambda s: s.pop("expert_head.expert_head3.2.bias"), "missing"),
        (lambda s: s.update({"regression_head.weight": torch.zeros(1, 1000)}), "shape"),
        (lambda s: s.update({"regression_head.linear.weight": s["regression_head.weight"].clone()}), "stored twice"),
    ],
    ids=["unknown key", "missing key", "wrong shape", "old and new name"],
)
def test_old_file_that_does_not_fit_is_a_checkpoint_error(tmp_path, legacy, change, message):
    config, _, state = legacy
    state = dict(state)
    change(state)
    with pytest.raises(CheckpointError, match=message):
        load_model(write_legacy(tmp_path, state, config))


def test_current_format_file_with_old_names_is_a_checkpoint_error(tmp_path, legacy):
    """The rename applies to the formats that had the old names, not to any file that looks old."""
    config, _, state = legacy
    with pytest.raises(CheckpointError, match="does not fit humanaes-mini"):
        load_model(write_legacy(tmp_path, state, config, version=FORMAT_VERSION))
