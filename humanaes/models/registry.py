"""Model presets (data in presets/*.json), `create_model`, and `load` — name or path to scorer.

Resolution order of `load(name_or_path)`:
  None                 the bundled default model (small CNN shipped in the package)
  a bundled name       that bundled model
  a preset name        random-init presets build in memory; pretrained ones resolve to their hub id
  an existing folder   our format, the original InternVL2/HumanAesExpert layout, or a bundled model
  "org/name"           a Hugging Face Hub repo (local cache first; download when online)
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from humanaes.models.expert.config import HumanAesConfig
from humanaes.errors import CheckpointError, ModelNotFoundError
from humanaes.hints import hint
from humanaes.modelinfo import bundled_metadata

if TYPE_CHECKING:  # torch loads on first use: `humanaes models` and `--help` stay instant
    import torch

BUNDLED_DEFAULT = "humanaes-mini"
BUNDLED_NAMES = (BUNDLED_DEFAULT,)


@lru_cache(maxsize=None)
def _preset_files() -> dict[str, Path]:
    folder = resources.files("humanaes.models.expert.presets")
    return {
        p.name[: -len(".json")]: Path(str(p))
        for p in folder.iterdir()
        if p.name.endswith(".json") and p.name != "templates.json"
    }


def list_presets() -> list[str]:
    return sorted(_preset_files())


def get_preset(name: str) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        raise ModelNotFoundError(f"unknown preset {name!r}; presets: {', '.join(sorted(files))}")
    return json.loads(files[name].read_text(encoding="utf-8"))


def preset_config(preset_name: str, **overrides: Any) -> HumanAesConfig:
    """A preset's config, with top-level keys overridden."""
    preset = get_preset(preset_name)
    data = {**preset["config"], "description": preset.get("description", ""), "score_meaning": preset.get("score_meaning", "")}
    data.update(overrides)
    return HumanAesConfig.from_dict(data)


def create_model(
    name_or_config: str | HumanAesConfig, *, seed: int | None = None, attn_implementation: str = "sdpa"
) -> Any:
    """A randomly initialised HumanAesExpertModel of a preset's architecture (seeded), e.g. for
    training from scratch, tests and benchmarks. For trained weights use `load`."""
    import torch

    from humanaes.models.expert.modeling import HumanAesExpertModel

    if isinstance(name_or_config, HumanAesConfig):
        config, default_seed = name_or_config, 0
    else:
        config, default_seed = preset_config(name_or_config), int(get_preset(name_or_config).get("seed", 0))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(default_seed if seed is None else seed)
    try:
        model = HumanAesExpertModel(config, attn_implementation=attn_implementation)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def list_models() -> list[dict[str, Any]]:
    """Presets and bundled models: what their scores mean and their weights' licence."""
    from humanaes.modelinfo import model_facts

    bundled = model_facts(BUNDLED_DEFAULT)
    meta = bundled_metadata()
    rows = [{
        "name": BUNDLED_DEFAULT,
        "kind": "bundled (default, ships in the package)",
        "description": meta.get("description", "small CNN scorer shipped with humanaes"),
        "score_meaning": bundled.score_meaning,
        "licence": bundled.licence,
    }]
    for name in list_presets():
        preset = get_preset(name)
        rows.append(
            {
                "name": name,
                "kind": "preset (random weights)" if preset.get("random_init") else f"preset (weights: {preset.get('hub_id')})",
                "description": preset.get("description", ""),
                "score_meaning": preset.get("score_meaning", ""),
                "licence": model_facts(name).licence,
            }
        )
    return rows


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = "auto",
    apply_exif: bool = True,
    image_block_suffix: str | None = None,
    threads: int | str | None = "auto",
) -> Any:
    """Load a scorer by name, folder or hub id (see module docstring). Returns a BaseScorer.

    `threads` sets PyTorch's CPU threads when the model runs on the CPU: "auto" (the default)
    picks `humanaes.runtime.default_threads()` from how busy the machine is while the model
    loads, an int forces that many, None leaves PyTorch's setting alone.
    """
    from humanaes.runtime import CpuLoadProbe, apply_threads, resolve_device

    probe = CpuLoadProbe()  # measured over the load: no extra wait
    dev = resolve_device(device)
    path = None if name_or_path is None else Path(os.fspath(name_or_path)).expanduser()
    if name_or_path is None or str(name_or_path) in BUNDLED_NAMES or (path is not None and _is_bundled_folder(path)):
        # The bundled model needs neither transformers nor PEFT: keep them unimported (seconds).
        from humanaes.models.mini import load_bundled

        folder = None if name_or_path is None or str(name_or_path) in BUNDLED_NAMES else path
        scorer = load_bundled(str(dev), path=folder, dtype=dtype)
    else:
        from humanaes.models.expert.scorer import HumanAesScorer  # imports transformers: only for HumanAesExpert models

        assert path is not None
        model, tokenizer = load_model(name_or_path, device=dev, dtype=dtype, attn_implementation=attn_implementation)
        if image_block_suffix is not None:
            model.config.image_block_suffix = image_block_suffix
        name = model.config.name if str(name_or_path) in _preset_files() else path.name
        scorer = HumanAesScorer(model, tokenizer, name=name)
    scorer.apply_exif = apply_exif  # the default of the apply_exif option; a call may still pass its own
    if dev.type == "cpu":
        apply_threads(threads, probe)
    return scorer


def load_preprocessor(name_or_path: str | os.PathLike | None = None) -> Any:
    """The decoding + preparation of model `name_or_path` (a `humanaes.scorer.Preprocessor`)
    without its heavy weights, or None when that needs the loaded model.

    humanaes-mini: built from the packaged model (it loads in about a second; only its face
    detector goes into the result). HumanAesExpert: the tiling settings, read from a preset or
    a local folder's config.json alone. A hub id not yet in a local folder gives None (the
    caller prepares with the loaded scorer instead)."""
    path = None if name_or_path is None else Path(os.fspath(name_or_path)).expanduser()
    if name_or_path is None or str(name_or_path) in BUNDLED_NAMES or (path is not None and _is_bundled_folder(path)):
        from humanaes.models.mini import load_bundled

        folder = None if name_or_path is None or str(name_or_path) in BUNDLED_NAMES else path
        return load_bundled("cpu", path=folder, dtype="float32").preprocessor()
    from humanaes.models.expert.processing import TilePreprocessor

    assert path is not None
    name = os.fspath(name_or_path)
    if name in _preset_files() and not path.exists():
        preset = get_preset(name)
        if not preset.get("random_init"):
            return None  # the config comes with the downloaded weights
        return TilePreprocessor.from_config(preset_config(name))
    if not path.is_dir() or not (path / "config.json").is_file():
        return None
    from humanaes.models.expert.config import FORMAT_NAME, HumanAesConfig

    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the model reports what is wrong with it
    if data.get("format") == FORMAT_NAME:
        return TilePreprocessor.from_config(HumanAesConfig.load(path / "config.json"))
    if data.get("model_type") == "internvl_chat":
        from humanaes.models.expert.convert import config_from_internvl_chat

        return TilePreprocessor.from_config(config_from_internvl_chat(data, name=path.name))
    return None


def save_checkpoint(model_or_scorer: Any, folder: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Save a HumanAesExpert model (or the model and tokenizer of a scorer from `load`) in
    humanaes format, atomically; `load(folder)` reads it back. The bundled humanaes-mini model
    ships inside the package and is not saved this way (a clear error says so)."""
    from humanaes.models.expert.modeling import HumanAesExpertModel

    model = model_or_scorer
    if not isinstance(model, HumanAesExpertModel) and hasattr(model_or_scorer, "model"):
        model = model_or_scorer.model
        if tokenizer is None:
            tokenizer = getattr(model_or_scorer, "tokenizer", None)
    if not isinstance(model, HumanAesExpertModel):
        what = getattr(model_or_scorer, "name", None) or type(model_or_scorer).__name__
        if str(what) in BUNDLED_NAMES or type(model).__module__.startswith("humanaes.models.mini"):
            what = BUNDLED_DEFAULT
            raise CheckpointError(
                f"save_checkpoint saves HumanAesExpert models; {what} is the bundled model, which ships inside the "
                "package (load it with humanaes.load()) and has its own format (humanaes.models.mini.save_bundled)"
            )
        raise CheckpointError(
            f"save_checkpoint saves HumanAesExpert models (or scorers from humanaes.load of one), not {what}"
        )
    from humanaes.models.expert.checkpoint import save_humanaes

    return save_humanaes(model, folder, tokenizer=tokenizer)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = "auto",
) -> tuple[Any, Any]:
    """A HumanAesExpertModel and its tokenizer from a preset, folder or hub id (no scorer)."""
    from humanaes.models.expert.checkpoint import detect_format, load_humanaes, load_original
    from humanaes.models.expert.modeling import choose_attn_implementation
    from humanaes.runtime import resolve_device, resolve_dtype
    from humanaes.models.expert.tokenization import load_tokenizer

    dev = resolve_device(device)
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if name in _preset_files() and not path.exists():
        preset = get_preset(name)
        if preset.get("random_init"):
            torch_dtype = resolve_dtype(dtype, dev, preset["config"].get("torch_dtype", "float32"))
            model = create_model(name, attn_implementation=choose_attn_implementation(attn_implementation, dev, torch_dtype))
            return _place(model, dev, torch_dtype), load_tokenizer(model.config.tokenizer)
        path = resolve_hub(preset["hub_id"])
    elif not path.exists():
        if _looks_like_hub_id(name):
            path = resolve_hub(name)
        else:
            raise ModelNotFoundError(
                f"model {name!r} not found: it is not a folder, a preset ({', '.join(list_presets())}), "
                f"a bundled model ({', '.join(_bundled_names()) or 'none'}) or a Hugging Face repo id"
            )
    if path.is_file():
        raise ModelNotFoundError(f"{path} is a file; pass the model folder that holds config.json and the weights")
    if not any(path.iterdir()):
        raise ModelNotFoundError(f"{path} is an empty folder; download the model into it first")
    kind = detect_format(path)
    config_dtype = json.loads((path / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
    torch_dtype = resolve_dtype(dtype, dev, config_dtype or "float32")
    attn = choose_attn_implementation(attn_implementation, dev, torch_dtype)
    loader = load_humanaes if kind == "humanaes" else load_original
    model, _ = loader(path, dtype=torch_dtype, attn_implementation=attn)
    return _place(model, dev, torch_dtype), load_tokenizer(model.config.tokenizer)


def _place(model: Any, device: "torch.device", dtype: "torch.dtype") -> Any:
    model.to_inference_dtype(dtype)
    return model.to(device)


def resolve_hub(repo_id: str) -> Path:
    """A hub repo's local snapshot: the cache first, a download when online; offline, a clear error."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a core dependency
        raise ModelNotFoundError(f"cannot fetch {repo_id!r}: huggingface_hub is not installed") from None
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache; try the network below
        pass
    use_folder = _use_folder_hint(repo_id)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; on a machine with "
            f"internet run `hf download {repo_id} --local-dir {_folder_name(repo_id)}` and {use_folder}"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFoundError(
            f"could not download {repo_id!r} ({type(exc).__name__}); on a machine with internet run "
            f"`hf download {repo_id} --local-dir {_folder_name(repo_id)}` and {use_folder}"
        ) from None


def _folder_name(repo_id: str) -> str:
    return repo_id.rsplit("/", 1)[-1]


def _use_folder_hint(repo_id: str) -> str:
    folder = _folder_name(repo_id)
    return hint(
        api=f'pass that folder: humanaes.load("{folder}")',
        cli=f"pass that folder: --model {folder}",
        config=f"set the config's init to that folder: init={folder}",
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _bundled_names() -> list[str]:
    return list(BUNDLED_NAMES)


def _is_bundled_folder(path: Path) -> bool:
    """A folder written by humanaes.models.mini.save_bundled (humanaes-mini.json + weights)."""
    return path.is_dir() and (path / f"{BUNDLED_DEFAULT}.json").is_file() and (path / f"{BUNDLED_DEFAULT}.safetensors").is_file()


__all__ = [
    "BUNDLED_DEFAULT", "create_model", "get_preset", "list_models", "list_presets", "load", "load_model",
    "preset_config", "save_checkpoint",
]
