"""The model registry (issue 12): families found by importing the subpackages of
humanaes.models, a third family added as one folder, every branch of `load`'s resolution, the
error for a folder no family claims, typed returns, and `humanaes models` reading the registry."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import humanaes
import humanaes.models
from humanaes.cli import main
from humanaes.errors import CheckpointError, ModelNotFoundError
from humanaes.models import registry
from humanaes.scorer import BaseScorer

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# A whole model family in one folder: it registers itself on import, like expert/ and mini/.
# Its "model" scores an image by its mean red level (a real computation the test can check).
TOY_INIT = '''
from pathlib import Path

from humanaes.modelinfo import ModelFacts
from humanaes.models.registry import ModelEntry, ModelFamily, register_family


def _load(resolved, settings):
    from humanaes.models.toy.scorer import ToyScorer

    gain = 1.0
    if resolved.folder is not None:
        gain = float((resolved.folder / "toy.json").read_text())
    return ToyScorer(gain)


def _save(scorer, folder, tokenizer=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.json").write_text(str(scorer.gain))
    return folder


def _create(name, *, seed=None, attn_implementation="sdpa"):
    from humanaes.models.toy.scorer import ToyModel

    return ToyModel(seed)


TOY_FAMILY = register_family(ModelFamily(
    name="toy",
    package="humanaes.models.toy",
    folder_format="toy.json",
    names=lambda: ("toy",),
    claims_folder=lambda folder: (folder / "toy.json").is_file(),
    load=_load,
    list_models=lambda: [ModelEntry(name="toy", family="toy", kind="toy (test)", description="mean red level",
                                    score_meaning="redness in [0, 1]", licence="CC0 toy licence")],
    create=_create,
    save=_save,
    facts=lambda name: ModelFacts(name, "toy, a test family", "redness", "CC0 toy licence", True) if name == "toy" else None,
    order=50,
))
'''

TOY_SCORER = '''
import torch

from humanaes.scorer import BaseScorer
from humanaes.schema import ScoreResult


class ToyModel(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.seed = seed


class ToyScorer(BaseScorer):
    name = "toy"
    supported_modes = ("fast",)

    def __init__(self, gain):
        self.gain = gain

    def prepare(self, image, **options):
        return sum(image.tobytes()[0::3]) / (255.0 * image.width * image.height)

    def score_prepared(self, prepared, names, mode, **options):
        return [ScoreResult(image=n).finalize(min(1.0, self.gain * p)) for n, p in zip(names, prepared)]
'''


@pytest.fixture
def toy_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `toy/` family folder placed among the subpackages of humanaes.models (by adding its
    parent to the package's search path, which is what the import system and pkgutil read),
    without editing any humanaes file. Undone after the test."""
    root = tmp_path / "families"
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "__init__.py").write_text(TOY_INIT)
    (root / "toy" / "scorer.py").write_text(TOY_SCORER)
    registry.families()  # the real families register before the registry is swapped for a copy
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(humanaes.models, "__path__", [*humanaes.models.__path__, str(root)])
    yield root
    for module in [m for m in sys.modules if m == "humanaes.models.toy" or m.startswith("humanaes.models.toy.")]:
        del sys.modules[module]


def _red_level(path: Path) -> float:
    image = Image.open(path).convert("RGB")
    return sum(image.tobytes()[0::3]) / (255.0 * image.width * image.height)


# -- a third family is one folder ----------------------------------------------------------------


def test_a_third_family_is_one_folder(toy_family: Path, tmp_path: Path) -> None:
    assert [f.name for f in registry.families()] == ["mini", "expert", "toy"]
    scorer = humanaes.load("toy", device="cpu", threads=None)
    assert isinstance(scorer, BaseScorer) and type(scorer).__module__ == "humanaes.models.toy.scorer"
    result = scorer.score(EXAMPLES / "astronaut.png")[0]
    assert result.error is None and result.overall == pytest.approx(_red_level(EXAMPLES / "astronaut.png"), abs=1e-9)

    assert [e["name"] for e in humanaes.list_models()] == ["humanaes-mini", *humanaes.list_presets(), "toy"]
    listed = CliRunner().invoke(main, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {"name": "toy", "family": "toy", "kind": "toy (test)", "description": "mean red level",
            "score_meaning": "redness in [0, 1]", "licence": "CC0 toy licence"} in json.loads(listed.output)
    table = CliRunner().invoke(main, ["models"], env={"COLUMNS": "200"})
    assert "CC0 toy licence" in table.output

    # its folders, its save, its random-init model and its facts go through the same registry
    scorer.gain = 0.5
    folder = humanaes.save_checkpoint(scorer, tmp_path / "saved")
    again = humanaes.load(folder, device="cpu", threads=None)
    assert again.gain == 0.5 and again.score(EXAMPLES / "astronaut.png")[0].overall == pytest.approx(0.5 * result.overall)
    assert humanaes.create_model("toy", seed=7).seed == 7
    from humanaes.modelinfo import model_facts

    assert model_facts("toy").title == "toy, a test family"


def test_the_cli_scores_with_a_third_family(toy_family: Path) -> None:
    result = CliRunner().invoke(main, ["score", "--model", "toy", "--format", "jsonl", "-q", str(EXAMPLES / "grace_hopper.jpg")])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert row["overall"] == pytest.approx(_red_level(EXAMPLES / "grace_hopper.jpg"), abs=1e-6)


def test_a_name_taken_by_another_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    mini = registry.get_family("mini")
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    with pytest.raises(ValueError, match="registered by humanaes.models.mini already"):
        registry.register_family(registry.ModelFamily(
            name="mini", package="elsewhere", folder_format="", names=tuple, claims_folder=lambda p: False,
            load=mini.load, list_models=list))


# -- resolution order ----------------------------------------------------------------------------


def _bundled_folder(folder: Path) -> Path:
    """A folder in the bundled model's format: the packaged weights (linked) and a copy of its
    metadata that says where it comes from."""
    folder.mkdir(parents=True)
    package = Path(str(resources.files("humanaes.models.mini")))
    (folder / "humanaes-mini.safetensors").symlink_to(package / "humanaes-mini.safetensors")
    meta = json.loads((package / "humanaes-mini.json").read_text(encoding="utf-8"))
    (folder / "humanaes-mini.json").write_text(json.dumps({**meta, "copied_to": folder.name}))
    return folder


def _expert_folder(folder: Path, config: dict | str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def test_none_and_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry.resolve(None) == registry.Resolved(registry.get_family("mini"), "", name="humanaes-mini")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "humanaes-mini").mkdir()  # a stray folder does not hide the bundled model
    resolved = registry.resolve("humanaes-mini")
    assert (resolved.family.name, resolved.name, resolved.folder) == ("mini", "humanaes-mini", None)
    resolved = registry.resolve("humanaes-tiny")
    assert (resolved.family.name, resolved.name, resolved.folder) == ("expert", "humanaes-tiny", None)


def test_a_folder_named_like_a_preset_wins_over_the_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _expert_folder(tmp_path / "humanaes-tiny", {"format": "humanaes"})
    resolved = registry.resolve("humanaes-tiny")
    assert (resolved.family.name, resolved.name, resolved.folder) == ("expert", None, Path("humanaes-tiny"))


@pytest.mark.parametrize(("config", "family"), [
    ({"format": "humanaes"}, "expert"),
    ({"model_type": "internvl_chat"}, "expert"),
    ("{not json", "expert"),  # claimed, so that loading says what is wrong with it
])
def test_folders_of_each_family(tmp_path: Path, config: dict | str, family: str) -> None:
    folder = _expert_folder(tmp_path / "m", config)
    assert registry.resolve(folder) == registry.Resolved(registry.get_family(family), str(folder), folder=folder)
    bundled = _bundled_folder(tmp_path / "b")
    assert registry.resolve(str(bundled)).family.name == "mini"
    # a folder with both: the bundled format is consulted first
    _bundled_folder(tmp_path / "both")
    (tmp_path / "both" / "config.json").write_text(json.dumps({"format": "humanaes"}))
    assert registry.resolve(tmp_path / "both").family.name == "mini"


def test_a_bundled_folder_loads_as_the_bundled_model(tmp_path: Path) -> None:
    scorer = humanaes.load(_bundled_folder(tmp_path / "copy"), device="cpu", dtype="float32", threads=None)
    reference = humanaes.load(device="cpu", dtype="float32", threads=None)
    assert type(scorer).__name__ == "BundledScorer" and scorer.meta["copied_to"] == "copy"  # read from the folder
    a, b = (s.score(EXAMPLES / "astronaut.png")[0].overall for s in (scorer, reference))
    assert a == b


def test_a_folder_no_family_claims(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
    _expert_folder(tmp_path / "llama", {"model_type": "llama"})
    for folder in (tmp_path / "junk", tmp_path / "llama"):
        with pytest.raises(ModelNotFoundError) as info:
            humanaes.load(folder, device="cpu")
        message = str(info.value)
        assert message.startswith(f"{folder} is not a model folder: no model family claims it (tried ")
        assert "mini (humanaes-mini.json + humanaes-mini.safetensors)" in message
        assert "expert (config.json with format 'humanaes' or model_type 'internvl_chat')" in message
        assert "\n" not in message


def test_files_empty_folders_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="empty folder; download the model into it first"):
        registry.resolve(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="is a file; pass the model folder"):
        registry.resolve(tmp_path / "file.safetensors")
    with pytest.raises(ModelNotFoundError) as info:
        registry.resolve("no-such-model")
    assert str(info.value) == ("model 'no-such-model' not found: it is not a folder, a model name (humanaes-mini, "
                               f"{', '.join(humanaes.list_presets())}) or a Hugging Face repo id")


def test_hub_ids_resolve_to_a_folder_then_a_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = _expert_folder(tmp_path / "snapshot", {"model_type": "internvl_chat"})
    asked: list[str] = []
    monkeypatch.setattr(registry, "resolve_hub", lambda repo: asked.append(repo) or snapshot)
    resolved = registry.resolve("someone/Model")
    assert asked == ["someone/Model"] and resolved == registry.Resolved(registry.get_family("expert"), "someone/Model",
                                                                        folder=snapshot)
    with pytest.raises(ModelNotFoundError, match="not fetched here"):
        registry.resolve("someone/Other", fetch=False)
    assert asked == ["someone/Model"]
    assert registry.load_preprocessor("someone/Other") is None and asked == ["someone/Model"]


def test_a_pretrained_preset_loads_from_its_hub_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    from humanaes.models.expert import family as expert

    asked: list[str] = []

    def offline(repo: str) -> Path:
        asked.append(repo)
        raise ModelNotFoundError(f"{repo} is not cached")

    monkeypatch.setattr(expert, "resolve_hub", offline)
    with pytest.raises(ModelNotFoundError, match="is not cached"):
        humanaes.load("humanaes-1b", device="cpu")
    assert asked == [humanaes.get_preset("humanaes-1b")["hub_id"]] and "/" in asked[0]
    assert registry.load_preprocessor("humanaes-1b") is None and len(asked) == 1  # nothing fetched for that


# -- typed returns and dispatch ----------------------------------------------------------------


def test_public_functions_are_typed() -> None:
    assert inspect.signature(registry.load).return_annotation == "BaseScorer"
    assert inspect.signature(registry.load_preprocessor).return_annotation == "Preprocessor | None"
    assert inspect.signature(registry.list_models).return_annotation == "list[ModelEntry]"
    assert inspect.signature(registry.create_model).return_annotation == "torch.nn.Module"
    from humanaes.models.expert import family as expert

    assert inspect.signature(expert.create_expert_model).return_annotation == "HumanAesExpertModel"
    assert inspect.signature(expert.load_expert_model).return_annotation == "tuple[HumanAesExpertModel, Any]"
    for entry in humanaes.list_models():
        assert set(entry) == set(registry.ModelEntry.__annotations__)


def test_annotations_name_real_types() -> None:
    """The annotations (strings, with TYPE_CHECKING imports) resolve to the classes they mean."""
    import typing

    import torch

    from humanaes.modelinfo import ModelFacts
    from humanaes.models.expert import family as expert
    from humanaes.models.expert.config import HumanAesConfig
    from humanaes.models.expert.modeling import HumanAesExpertModel
    from humanaes.models.expert.processing import TilePreprocessor
    from humanaes.models.expert.scorer import HumanAesScorer
    from humanaes.scorer import Preprocessor

    names = {"torch": torch, "BaseScorer": BaseScorer, "Preprocessor": Preprocessor, "ModelFacts": ModelFacts,
             "HumanAesConfig": HumanAesConfig, "HumanAesExpertModel": HumanAesExpertModel,
             "TilePreprocessor": TilePreprocessor, "HumanAesScorer": HumanAesScorer}
    assert typing.get_type_hints(registry.load, {**vars(registry), **names})["return"] is BaseScorer
    assert typing.get_type_hints(registry.save_checkpoint, {**vars(registry), **names})["return"] is Path
    for cls in (registry.ModelFamily, registry.Resolved, registry.LoadSettings):
        typing.get_type_hints(cls, {**vars(registry), **names})
    hints = typing.get_type_hints(expert.create_expert_model, {**vars(expert), **names})
    assert hints["return"] is HumanAesExpertModel
    assert typing.get_type_hints(expert.load_scorer, {**vars(expert), **names})["return"] is HumanAesScorer


def test_humanaes_models_is_one_row_per_registered_name() -> None:
    listed = CliRunner().invoke(main, ["models", "--json"])
    rows = json.loads(listed.output)
    assert [(r["family"], r["name"]) for r in rows] == [(f.name, n) for f in registry.families() for n in f.names()]
    assert [r["name"] for r in rows] == registry.model_names() == ["humanaes-mini", *humanaes.list_presets()]


def test_create_model_and_load_model_are_the_expert_familys(tmp_path: Path) -> None:
    import torch

    from humanaes.models.expert.family import load_expert_model
    from humanaes.models.expert.modeling import HumanAesExpertModel

    created = humanaes.create_model("humanaes-tiny")
    assert isinstance(created, HumanAesExpertModel)
    assert isinstance(humanaes.create_model(created.config, seed=3), HumanAesExpertModel)
    model, tokenizer = registry.load_model("humanaes-tiny", device="cpu", dtype="float32")  # the old name
    assert isinstance(model, HumanAesExpertModel) and tokenizer is not None
    for (k, a), (_, b) in zip(created.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ModelNotFoundError, match="'humanaes-mini' is a mini model, not a HumanAesExpert model"):
        load_expert_model("humanaes-mini")
    with pytest.raises(ModelNotFoundError, match="mini models cannot be created with random weights"):
        humanaes.create_model("humanaes-mini")
    with pytest.raises(ModelNotFoundError, match="unknown model name 'nope'"):
        humanaes.create_model("nope")


def test_save_checkpoint_dispatches_by_family(tmp_path: Path) -> None:
    scorer = humanaes.load(device="cpu", threads=None)
    with pytest.raises(CheckpointError, match="humanaes-mini is the bundled model"):
        humanaes.save_checkpoint(scorer, tmp_path / "out")
    with pytest.raises(CheckpointError, match="not dict"):
        humanaes.save_checkpoint({}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_preprocessor_dispatches_by_family(tmp_path: Path) -> None:
    from humanaes.models.expert.processing import TilePreprocessor
    from humanaes.models.mini.scorer import MiniPreprocessor

    assert isinstance(registry.load_preprocessor(None), MiniPreprocessor)
    assert isinstance(registry.load_preprocessor(_bundled_folder(tmp_path / "b")), MiniPreprocessor)
    assert registry.load_preprocessor("humanaes-tiny") == TilePreprocessor.from_config(registry.preset_config("humanaes-tiny"))
    assert registry.load_preprocessor("no-such-model") is None


def test_old_names_stay_importable() -> None:
    from humanaes.modelinfo import BUNDLED_NAME, bundled_licence, bundled_metadata
    from humanaes.models.mini import BundledScorer, load_bundled  # noqa: F401
    from humanaes.models.registry import (  # noqa: F401
        BUNDLED_DEFAULT,
        _is_bundled_folder,
        _looks_like_hub_id,
        get_preset,
        list_presets,
        load_model,
        preset_config,
        resolve_hub,
    )

    assert BUNDLED_DEFAULT == BUNDLED_NAME == "humanaes-mini" and bundled_metadata()["name"] == "humanaes-mini"
    assert bundled_licence() == "weights derived from MEBeauty: non-commercial research use only"
    assert list_presets() == humanaes.list_presets() and get_preset("humanaes-tiny")["random_init"]


# -- registration is cheap -----------------------------------------------------------------------


def test_models_command_and_registration_import_no_torch() -> None:
    code = textwrap.dedent("""
        import sys
        from humanaes.cli import main
        from humanaes.models import registry
        assert [f.name for f in registry.families()] == ["mini", "expert"]
        try:
            main(["models"], standalone_mode=False)
        except SystemExit:
            pass
        print("HEAVY", sorted(m for m in ("torch", "transformers", "peft", "PIL") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "humanaes-tiny" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout


def test_model_identity_comes_from_the_family(toy_family: Path, tmp_path: Path) -> None:
    """`humanaes batch` records this in its job before any weights load (distributed/runner.py)."""
    from humanaes.models.expert.scorer import HumanAesScorer
    from humanaes.models.mini.family import bundled_metadata
    from humanaes.models.mini.scorer import BundledScorer
    from humanaes.models.registry import model_identity
    from humanaes.options import ScoreOptions

    mini = model_identity(None)
    assert (mini.name, mini.weights_sha256) == ("humanaes-mini", bundled_metadata()["weights_sha256"])
    assert (mini.default_mode, mini.options_class) == (BundledScorer.default_mode, BundledScorer.options_class)
    preset = model_identity("humanaes-tiny")
    assert (preset.name, preset.default_mode, preset.options_class) == ("humanaes-tiny", "default", HumanAesScorer.options_class)
    # a hub repo not fetched yet: the family that takes hub repos answers, nothing is downloaded
    hub = model_identity("some-org/not-fetched")
    assert (hub.name, hub.options_class) == ("some-org/not-fetched", HumanAesScorer.options_class)
    # a family without an identity hook: its name, no checksum, the base options
    toy = model_identity("toy")
    assert (toy.name, toy.weights_sha256, toy.default_mode, toy.options_class) == ("toy", None, "default", ScoreOptions)
    with pytest.raises(ModelNotFoundError):
        model_identity(str(tmp_path / "missing"))


def test_models_json_publishes_each_model_s_typed_options() -> None:
    """`humanaes models --json` lists the options a model's scorer takes, without loading it:
    exactly what the loaded scorer publishes (the service's /v1/models reads the same)."""
    from click.testing import CliRunner

    from humanaes.cli import main

    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    import humanaes

    assert rows["humanaes-mini"]["options"] == humanaes.load().options_schema()
    tiny = humanaes.load("humanaes-tiny", device="cpu", threads=None)
    assert rows["humanaes-tiny"]["options"] == tiny.options_schema()
    assert {"do_sample", "seed", "max_tiles"} <= {o["name"] for o in rows["humanaes-1b"]["options"]}
    assert "max_tiles" not in {o["name"] for o in rows["humanaes-mini"]["options"]}


def test_a_damaged_mini_folder_is_a_clear_error_before_a_batch_job(tmp_path: Path) -> None:
    """`humanaes batch` asks the identity first: a damaged metadata file is one CheckpointError line."""
    from humanaes.errors import CheckpointError
    from humanaes.models.registry import model_identity

    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / "humanaes-mini.json").write_text("{not json", encoding="utf-8")
    (folder / "humanaes-mini.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="humanaes-mini.json cannot be read as the model's metadata"):
        model_identity(folder)
    (folder / "humanaes-mini.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointError, match="is not the model's metadata"):
        model_identity(folder)
