"""A newcomer's first minutes: fast start, no heavy imports, the thread default, hints worded for
the caller, missing extras, `humanaes models` within the terminal (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

import humanaes
from humanaes import runtime
from humanaes.cli import main
from humanaes.errors import CheckpointError, HumanAesError, ModelNotFoundError
from humanaes.hints import hint, hint_style, import_optional, missing_extra_message
from humanaes.scorer import BaseScorer

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED_DATA = REPO.parent / "shared" / "data" / "HumanBeauty"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env})


# -- imports ------------------------------------------------------------------------------------


def test_help_of_every_command_imports_no_torch() -> None:
    """`humanaes --help` (and each command's) must not import torch: 2-3 s on a small machine."""
    proc = _python("""
        import sys
        from humanaes.cli import main
        names = [[]] + [[name] for name in main.commands] + [["data", sub] for sub in main.commands["data"].commands]
        for args in names:
            try:
                main(args + ["--help"], standalone_mode=False)
            except SystemExit:
                pass
        heavy = sorted(m for m in ("torch", "transformers", "peft", "PIL") if m in sys.modules)
        print("HEAVY", heavy, len(names))
    """)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY"))
    assert line.startswith("HEAVY []"), line  # torch alone is 1-2 s on a small machine


def test_bundled_model_never_imports_transformers_or_peft() -> None:
    proc = _python("""
        import sys
        import humanaes
        assert "torch" not in sys.modules, "import humanaes pulled in torch"
        scorer = humanaes.load(device="cpu")
        results = scorer.score(["examples/astronaut.png", "examples/grace_hopper.jpg"])
        assert all(r.error is None for r in results), results
        print("LOADED", sorted(m for m in ("transformers", "peft", "accelerate") if m in sys.modules))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout


# What scoring may never import: the training subpackage (under its new and its old names) and
# the training-only extras. `humanaes eval`/`train` may; `humanaes score` and the API may not.
TRAINING_ONLY = ("humanaes.training", "humanaes.trainer", "humanaes.finetune", "humanaes.metavoter",
                 "humanaes.synthetic", "peft", "accelerate", "deepspeed")
TRAINING_EXTRAS = ("peft", "accelerate", "deepspeed")

# Runs the given stages in one process and prints, after each, the training-only modules loaded
# so far and every attempt to import a hidden extra (with the module that asked for it).
_RUNTIME_PROBE = """
import builtins, importlib, json, sys
TRAINING_ONLY, HIDDEN, STAGES = json.loads(sys.argv[1])
attempts = []

def _importer():
    frame = sys._getframe(3)  # past _importer, _note and the import hook
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"

def _note(name):
    if name.split(".")[0] in HIDDEN:
        attempts.append([name, _importer()])

for name in HIDDEN:  # as if not installed: find_spec says None, an import raises ModuleNotFoundError
    sys.modules[name] = None
_real_import, _real_import_module = builtins.__import__, importlib.import_module
def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0:  # `from .deepspeed import ...` inside transformers is its own module
        _note(name)
    return _real_import(name, globals, locals, fromlist, level)
def _import_module(name, *args, **kwargs):
    if not name.startswith("."):
        _note(name)
    return _real_import_module(name, *args, **kwargs)
builtins.__import__, importlib.import_module = _import, _import_module

import humanaes
from pathlib import Path
examples = sorted(str(p) for p in Path("examples").iterdir() if p.suffix in (".png", ".jpg"))
for stage in STAGES:
    results = []  # "import": nothing more than `import humanaes`
    if stage == "api-default":
        results = humanaes.load(device="cpu").score(examples)
    elif stage == "api-tiny":
        results = humanaes.load("humanaes-tiny", device="cpu").score(examples, max_tiles=1)
    elif stage.startswith("cli"):
        from humanaes.cli import main
        args = ["score", "examples/"] + (["--model", "humanaes-tiny", "--max-tiles", "1"] if stage == "cli-tiny" else [])
        exit_code = main(args, standalone_mode=False)  # a user error returns 2 here instead of exiting
        assert exit_code in (None, 0), exit_code
    assert all(r.error is None for r in results), results
    loaded = sorted(m for m in sys.modules if sys.modules[m] is not None
                    and any(m == t or m.startswith(t + ".") for t in TRAINING_ONLY))
    print("STAGE " + json.dumps({"stage": stage, "loaded": loaded, "attempts": attempts}))
"""


def _probe_runtime(stages: list[str], hidden: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_PROBE, json.dumps([TRAINING_ONLY, hidden, stages])],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("STAGE ")]
    assert [r["stage"] for r in reports] == stages, proc.stdout[-2000:]
    return reports


def test_scoring_with_the_bundled_model_imports_no_training_code() -> None:
    """`import humanaes`, `humanaes.load()` + score and `humanaes score` with every extra installed:
    no training module, no PEFT, accelerate or DeepSpeed gets loaded."""
    for report in _probe_runtime(["import", "api-default", "cli-default"]):
        assert report["loaded"] == [], report


def test_scoring_with_humanaes_expert_needs_no_training_code() -> None:
    """The tiny HumanAesExpert preset through the API and the CLI, as installed without the train
    and deepspeed extras (transformers itself loads accelerate whenever it is installed, so the
    extras are hidden rather than checked in sys.modules): it scores, no training module is loaded
    and nothing asks for PEFT, accelerate or DeepSpeed."""
    for report in _probe_runtime(["api-tiny", "cli-tiny"], hidden=TRAINING_EXTRAS):
        assert report["loaded"] == [] and report["attempts"] == [], report


def _private_scoring_names_used(source: str) -> list[str]:
    """`_name`s of humanaes.models.* / humanaes.scorer (new or old module paths) that `source`
    imports or reads as an attribute of such a module."""
    import ast

    from humanaes._moved import MOVED_MODULES

    def scoring(module: str) -> bool:
        module = MOVED_MODULES.get(module, module)
        return module == "humanaes.scorer" or module == "humanaes.models" or module.startswith("humanaes.models.")

    found: list[str] = []
    module_aliases: set[str] = set()  # local names bound to a scoring module
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and scoring(node.module):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
                module_aliases.add(alias.asname or alias.name)  # harmless when it is not a module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if scoring(alias.name):
                    module_aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):  # humanaes.models.expert.batching._x
                base = base.value
            if isinstance(base, ast.Name) and (base.id in module_aliases or base.id == "humanaes"):
                found.append(ast.unparse(node))
    return found


def test_training_uses_only_public_pieces_of_scoring() -> None:
    """Training may build on scoring's public API, never on its internals: a private helper it
    needs moves to a public home both share (as left padding did to models/expert/batching.py)."""
    files = sorted([*(REPO / "humanaes" / "training").rglob("*.py"), *(REPO / "humanaes" / "evaluation").rglob("*.py")])
    offenders = {str(path.relative_to(REPO)): names for path in files
                 if (names := _private_scoring_names_used(path.read_text(encoding="utf-8")))}
    assert offenders == {}
    # the check itself sees both spellings of reaching in
    assert _private_scoring_names_used("from humanaes.scoring import _left_pad") == ["humanaes.scoring._left_pad"]
    assert _private_scoring_names_used("from humanaes.models.expert import batching\nbatching._pad(1)") == ["batching._pad"]


def test_lazy_names_resolve() -> None:
    for name in humanaes.__all__:
        assert getattr(humanaes, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        humanaes.nope  # noqa: B018


# -- threads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "others", "expected"), [
    (2, 0.0, 2), (2, 0.3, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.5, 1), (1, 0.0, 1), (8, 2.2, 6),
])
def test_default_threads_leaves_out_busy_cpus(cpus: int, others: float, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_torch_default_threads", lambda: 64)
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 64)
    assert runtime.default_threads(cpus=cpus, others=others) == expected


def test_default_threads_never_exceeds_pytorchs_default_or_the_callers_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        monkeypatch.setattr(runtime, "_torch_default_threads", lambda: 4)  # e.g. OMP_NUM_THREADS=4
        assert runtime.default_threads(cpus=16, others=0.0) == 4
        torch.set_num_threads(3)  # the caller chose 3 before loading: auto does not raise it
        assert runtime.default_threads(cpus=16, others=0.0) == 3
    finally:
        torch.set_num_threads(before)


def test_probe_subtracts_own_cpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([(100.0, 400.0), (101.5, 402.0)])  # 1.5 CPU-seconds busy over the window
    own = iter([10.0, 10.5])  # of which 0.5 s were ours
    wall = iter([0.0, 1.0])
    monkeypatch.setattr(runtime, "_cpu_ticks", lambda cpus=None: next(ticks))
    monkeypatch.setattr(runtime, "_own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(runtime.time, "monotonic", lambda: next(wall))
    probe = runtime.CpuLoadProbe()
    assert probe.others_busy() == pytest.approx(1.0)


def test_cpu_ticks_counts_only_our_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  300 0 100 600 0 0 0 0 0 0\n"
                    "cpu0 100 0 0 0 0 0 0 0 0 0\ncpu1 0 0 100 100 0 0 0 0 0 0\ncpu2 200 0 0 500 0 0 0 0 0 0\nintr 1\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k))
    hz = os.sysconf("SC_CLK_TCK")
    assert runtime._cpu_ticks() == (400 / hz, 1000 / hz)
    assert runtime._cpu_ticks({0, 1}) == (200 / hz, 300 / hz)
    assert runtime._cpu_ticks({2}) == (200 / hz, 700 / hz)


def test_probe_sees_a_busy_neighbour() -> None:
    """A real CPU burner on our CPUs counts as (about) one busy CPU."""
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        import time

        time.sleep(0.3)
        probe = runtime.CpuLoadProbe()
        time.sleep(1.0)
        busy = probe.others_busy()
    finally:
        burner.kill()
        burner.wait()
    assert busy >= 0.7


def test_apply_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(runtime, "default_threads", lambda probe=None: 1)
        assert runtime.apply_threads("auto") == 1 and torch.get_num_threads() == 1
        assert runtime.apply_threads(3) == 3 and torch.get_num_threads() == 3
        assert runtime.apply_threads(None) is None and torch.get_num_threads() == 3
        with pytest.raises(HumanAesError, match="threads must be a positive whole number"):
            runtime.apply_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("flag", "expected"), [(None, 1), (3, 3)])
def test_cli_uses_the_default_unless_threads_is_given(flag: int | None, expected: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from humanaes.cli.score import _load_scorer

    before = torch.get_num_threads()
    monkeypatch.setattr(humanaes, "load", lambda *a, **k: object(), raising=False)
    monkeypatch.setattr(runtime, "default_threads", lambda probe=None: 1)
    try:
        torch.set_num_threads(2)
        _load_scorer(None, "cpu", "auto", threads=flag, quiet=True)
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_score_help_documents_the_thread_default() -> None:
    text = " ".join(CliRunner().invoke(main, ["score", "--help"]).output.split())
    assert "the usable CPUs minus those other processes keep busy while the model loads" in text
    assert "N forces N" in text


def test_loading_line_on_a_terminal() -> None:
    """On a terminal the CLI says what it loads before the first result; off one it stays quiet."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child: run the CLI with its stderr on the pseudo-terminal
        os.environ.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "humanaes.cli", "score", "examples/astronaut.png"])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert text.index("loading model humanaes-mini (the bundled default) ...") < text.index("astronaut.png  ")
    assert "loaded model humanaes-mini (the bundled default) in " in text and "CPU thread" in text


# -- hints --------------------------------------------------------------------------------------


def test_device_hint_names_the_api_argument_or_the_flag() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(HumanAesError) as api:
        runtime.resolve_device("cuda")
    assert 'pass device="cpu"' in str(api.value) and "--" not in str(api.value)
    with hint_style("cli"), pytest.raises(HumanAesError) as cli:
        runtime.resolve_device("cuda")
    assert "use --device cpu" in str(cli.value)
    with pytest.raises(HumanAesError) as dtype:
        runtime.resolve_dtype("float16", torch.device("cpu"))
    assert 'pass dtype="bfloat16" or "float32"' in str(dtype.value) and "--dtype" not in str(dtype.value)


class _FastOnly(BaseScorer):
    name = "fast-only"
    supported_modes = ("fast",)

    def prepare(self, image: Any, **options: Any) -> Any:
        return image

    def score_prepared(self, prepared: list[Any], names: list[str], mode: str, **options: Any) -> list[Any]:
        return []


def test_mode_hint_names_load_for_api_callers() -> None:
    with pytest.raises(HumanAesError) as api:
        _FastOnly().check_mode("expert")
    assert "humanaes.load(" in str(api.value) and "--model" not in str(api.value)
    with hint_style("cli"), pytest.raises(HumanAesError) as cli:
        _FastOnly().check_mode("expert")
    assert "pass --model with a HumanAesExpert checkpoint" in str(cli.value)


def test_offline_hub_hint_uses_hf_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from humanaes.models.registry import resolve_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as api:
        resolve_hub("someone/NotCached")
    message = str(api.value)
    assert "`hf download someone/NotCached --local-dir NotCached`" in message and "huggingface-cli" not in message
    assert 'humanaes.load("NotCached")' in message and "--model" not in message
    for style, words in (("cli", "--model NotCached"), ("config", "init=NotCached")):
        with hint_style(style), pytest.raises(ModelNotFoundError) as exc:
            resolve_hub("someone/NotCached")
        assert words in str(exc.value)


def test_hint_falls_back_to_cli_words_for_config() -> None:
    with hint_style("config"):
        assert hint(api="a", cli="b") == "b" and hint(api="a", cli="b", config="c") == "c"
    assert hint(api="a", cli="b") == "a"
    with pytest.raises(ValueError):
        with hint_style("web"):
            pass


def _train_config(tmp_path: Path, init: str) -> Path:
    if not (SHARED_DATA / "train_label.jsonl").exists():
        pytest.skip("shared MEBeauty data not available")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"init": init, "data": {"train": str(SHARED_DATA)},
                                  "trainer": {"output_dir": str(tmp_path / "run")}}))
    return config


def test_train_offline_names_the_config_key_not_a_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["train", str(_train_config(tmp_path, "someone/NotCached"))])
    assert result.exit_code == 2, result.output
    assert "init=NotCached" in result.stderr and "--model" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- missing extras -----------------------------------------------------------------------------


def test_train_without_peft_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ModuleNotFoundError
    result = CliRunner().invoke(main, ["train", str(_train_config(tmp_path, "humanaes-tiny"))])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: `humanaes train` with LoRA (lora.r > 0) needs peft, which is not installed: pip install 'humanaes[train]'")


def test_any_command_hitting_a_missing_extra_gets_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command("needs-parquet")
    def needs_parquet() -> None:
        import pyarrow  # noqa: F401

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    main.add_command(needs_parquet)
    try:
        result = CliRunner().invoke(main, ["needs-parquet"])
    finally:
        main.commands.pop("needs-parquet")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: `humanaes needs-parquet` needs pyarrow, which is not installed: "
                                     "pip install 'humanaes[parquet]'")


def test_serve_without_its_extra_gets_the_shared_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: `humanaes serve` needs uvicorn, which is not installed: "
                                     "pip install 'humanaes[serve]'")


def test_unknown_missing_modules_stay_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_extra_message("not_a_humanaes_extra", "x") is None
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(HumanAesError, match=r"pip install 'humanaes\[train\]'"):
        import_optional("yaml", "reading YAML configs")
    with pytest.raises(ModuleNotFoundError):
        import_optional("surely_not_installed_module_xyz", "nothing")


# -- save_checkpoint ----------------------------------------------------------------------------


def test_save_checkpoint_of_the_bundled_scorer_is_a_clear_error(tmp_path: Path) -> None:
    class Bundled:
        name = "humanaes-mini"
        model = torch.nn.Linear(2, 2)

    with pytest.raises(CheckpointError, match="bundled model, which ships inside the package"):
        humanaes.save_checkpoint(Bundled(), tmp_path / "out")
    with pytest.raises(CheckpointError, match="not Linear"):
        humanaes.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "out")


def test_save_checkpoint_with_the_old_snippet_on_the_bundled_model(tmp_path: Path) -> None:
    """The README's former `save_checkpoint(scorer.model, ..., tokenizer=scorer.tokenizer)` with
    the default model: a HumanAesError that says why, not an AttributeError."""
    from humanaes.models.mini.scorer import BundledScorer, load_model

    model, meta = load_model(None, "cpu")
    scorer = BundledScorer(model, meta)
    with pytest.raises(CheckpointError, match="humanaes-mini is the bundled model"):
        humanaes.save_checkpoint(scorer.model, tmp_path / "out", tokenizer=scorer.tokenizer)
    assert not (tmp_path / "out").exists()


def test_save_checkpoint_of_a_scorer_round_trips(tmp_path: Path) -> None:
    scorer = humanaes.load("humanaes-tiny", device="cpu", threads=None)
    folder = humanaes.save_checkpoint(scorer, tmp_path / "ckpt")
    again = humanaes.load(folder, device="cpu", threads=None)
    a = scorer.score(str(EXAMPLES / "astronaut.png"), max_tiles=1)[0]
    b = again.score(str(EXAMPLES / "astronaut.png"), max_tiles=1)[0]
    assert a.error is None and a.overall == pytest.approx(b.overall, abs=1e-6)


# -- humanaes models ----------------------------------------------------------------------------


@pytest.mark.parametrize("width", [50, 80, 120, 250])
def test_models_fits_the_terminal_and_loses_no_words(width: int) -> None:
    result = CliRunner().invoke(main, ["models"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= width
    words = set(result.output.split())
    for entry in humanaes.list_models():
        for key in ("name", "score_meaning", "licence", "description"):
            assert set(str(entry[key]).split()) <= words, (key, entry[key])
    assert "non-commercial" in result.output


def test_the_bundled_models_licence_is_listed() -> None:
    entry = next(e for e in humanaes.list_models() if e["name"] == "humanaes-mini")
    assert entry["licence"] == "weights derived from MEBeauty: non-commercial research use only"


# -- fine-tuning without a val split --------------------------------------------------------------


def test_metric_without_validation_data_says_how_to_get_some(tmp_path: Path) -> None:
    from humanaes.errors import ConfigError
    from humanaes.training.finetune import FinetuneConfig, run_training

    if not (SHARED_DATA / "train_label.jsonl").exists():
        pytest.skip("shared MEBeauty data not available")
    data = tmp_path / "data"
    data.mkdir()
    rows = (SHARED_DATA / "train_label.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    (data / "train_label.jsonl").write_text("\n".join(rows) + "\n")  # no val_label.jsonl beside it
    (data / "HumanBeauty-58K").symlink_to(SHARED_DATA / "HumanBeauty-58K")
    config = FinetuneConfig.from_dict({"init": "humanaes-tiny", "data": {"train": str(data), "max_tiles": 1},
                                       "trainer": {"output_dir": str(tmp_path / "run"), "metric_for_best": "val_srcc"}})
    with pytest.raises(ConfigError, match=r"no val_label.jsonl in .*set data.val_holdout=0.05"):
        run_training(config)
    assert not (tmp_path / "run").exists()
