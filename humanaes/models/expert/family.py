"""The HumanAesExpert family in the model registry: its presets (data in presets/*.json), the
folders it reads (our format and the original InternVL2 layout), and its one model loader.

Importing this module is cheap (JSON and dataclasses, no torch): every function that needs the
model imports it when called.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from humanaes.errors import CheckpointError, ModelNotFoundError
from humanaes.modelinfo import ModelFacts
from humanaes.models.expert.config import FORMAT_NAME, HumanAesConfig
from humanaes.models.registry import (
    LoadSettings,
    ModelEntry,
    ModelFamily,
    Resolved,
    register_family,
    resolve,
    resolve_hub,
)

if TYPE_CHECKING:
    import torch

    from humanaes.models.expert.modeling import HumanAesExpertModel
    from humanaes.models.expert.processing import TilePreprocessor
    from humanaes.models.expert.scorer import HumanAesScorer

FAMILY_NAME = "expert"
ORIGINAL_MODEL_TYPE = "internvl_chat"
HUMANAESEXPERT_LICENCE = (
    "set by the HumanAesExpert release (KwaiVGI/HumanAesExpert; its code is MIT-licensed): "
    "check the model card of the checkpoint you use"
)
HUMANAESEXPERT_MEANING = "human image aesthetics in [0, 1], trained on HumanBeauty (108K human images, 12 dimensions)"
_HUMANAESEXPERT_NAME = re.compile(r"humanaes-?expert", re.IGNORECASE)


# -- presets ----------------------------------------------------------------------------------


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


@lru_cache(maxsize=None)
def _read_preset(name: str) -> dict[str, Any]:
    return json.loads(_preset_files()[name].read_text(encoding="utf-8"))


def get_preset(name: str) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        raise ModelNotFoundError(f"unknown preset {name!r}; presets: {', '.join(sorted(files))}")
    return json.loads(json.dumps(_read_preset(name)))  # a copy: callers may edit theirs


def preset_config(preset_name: str, **overrides: Any) -> HumanAesConfig:
    """A preset's config, with top-level keys overridden."""
    preset = get_preset(preset_name)
    data = {**preset["config"], "description": preset.get("description", ""), "score_meaning": preset.get("score_meaning", "")}
    data.update(overrides)
    return HumanAesConfig.from_dict(data)


# -- what the registry asks -------------------------------------------------------------------


def _config_json(folder: Path) -> dict[str, Any] | None:
    """A folder's config.json as a dict; None when absent or not a JSON object."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claims_folder(folder: Path) -> bool:
    """Our format (config.json says format "humanaes") or the original layout (model_type
    "internvl_chat"); a config.json that does not parse is ours to report on too."""
    if not (folder / "config.json").is_file():
        return False
    data = _config_json(folder)
    return data is None or data.get("format") == FORMAT_NAME or data.get("model_type") == ORIGINAL_MODEL_TYPE


def list_models() -> list[ModelEntry]:
    rows: list[ModelEntry] = []
    for name in list_presets():
        preset = _read_preset(name)
        rows.append(ModelEntry(
            name=name,
            family=FAMILY_NAME,
            kind="preset (random weights)" if preset.get("random_init") else f"preset (weights: {preset.get('hub_id')})",
            description=str(preset.get("description", "")),
            score_meaning=str(preset.get("score_meaning", "")),
            licence=expert_facts(name).licence,
        ))
    return rows


def expert_facts(name: str) -> ModelFacts | None:
    """Facts about a preset or a model named like HumanAesExpert; None for other names."""
    preset = _read_preset(name) if name in _preset_files() else None
    if preset is not None and preset.get("random_init"):
        return ModelFacts(name, f"{name}, random weights (not a trained model)",
                          str(preset.get("score_meaning") or "none: random weights"), "MIT (random weights made by humanaes)",
                          True)
    if preset is not None or _HUMANAESEXPERT_NAME.search(name):
        meaning = str((preset or {}).get("score_meaning") or HUMANAESEXPERT_MEANING)
        return ModelFacts(name, f"{name} (HumanAesExpert)", meaning, HUMANAESEXPERT_LICENCE, False)
    return None


# -- loading (imports torch and transformers when called) ------------------------------------


def create_expert_model(
    name_or_config: str | HumanAesConfig, *, seed: int | None = None, attn_implementation: str = "sdpa"
) -> HumanAesExpertModel:
    """A randomly initialised HumanAesExpertModel of a preset's architecture (seeded)."""
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


def load_expert_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = "auto",
) -> tuple[HumanAesExpertModel, Any]:
    """A HumanAesExpertModel and its tokenizer from a preset, folder or hub id (no scorer): the
    family's one model loader, resolved through the registry like `humanaes.load`."""
    from humanaes.runtime import resolve_device

    resolved = resolve(name_or_path)
    if resolved.family.name != FAMILY_NAME:
        raise ModelNotFoundError(f"{resolved.source!r} is a {resolved.family.name} model, not a HumanAesExpert model")
    return _load_resolved(resolved, resolve_device(device), dtype, attn_implementation)


def _load_resolved(
    resolved: Resolved, device: torch.device, dtype: str | torch.dtype | None, attn_implementation: str | None
) -> tuple[HumanAesExpertModel, Any]:
    from humanaes.models.expert.checkpoint import detect_format, load_humanaes, load_original
    from humanaes.models.expert.modeling import choose_attn_implementation
    from humanaes.models.expert.tokenization import load_tokenizer
    from humanaes.runtime import resolve_dtype

    if resolved.name is not None:
        preset = get_preset(resolved.name)
        if preset.get("random_init"):
            torch_dtype = resolve_dtype(dtype, device, preset["config"].get("torch_dtype", "float32"))
            attn = choose_attn_implementation(attn_implementation, device, torch_dtype)
            model = create_expert_model(resolved.name, attn_implementation=attn)
            return _place(model, device, torch_dtype), load_tokenizer(model.config.tokenizer)
        folder = resolve_hub(preset["hub_id"])
    else:
        assert resolved.folder is not None
        folder = resolved.folder
    kind = detect_format(folder)
    config_dtype = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
    torch_dtype = resolve_dtype(dtype, device, config_dtype or "float32")
    attn = choose_attn_implementation(attn_implementation, device, torch_dtype)
    loader = load_humanaes if kind == "humanaes" else load_original
    model, _ = loader(folder, dtype=torch_dtype, attn_implementation=attn)
    return _place(model, device, torch_dtype), load_tokenizer(model.config.tokenizer)


def _place(model: HumanAesExpertModel, device: torch.device, dtype: torch.dtype) -> HumanAesExpertModel:
    model.to_inference_dtype(dtype)
    return model.to(device)


def load_scorer(resolved: Resolved, settings: LoadSettings) -> HumanAesScorer:
    # Imports transformers: only ever for HumanAesExpert models.
    from humanaes.models.expert.scorer import HumanAesScorer

    model, tokenizer = _load_resolved(resolved, settings.device, settings.dtype, settings.attn_implementation)
    if settings.image_block_suffix is not None:
        model.config.image_block_suffix = settings.image_block_suffix
    # A preset is shown by its config's name; a folder or hub repo by its last path part.
    name = model.config.name if resolved.name is not None else Path(resolved.source).expanduser().name
    return HumanAesScorer(model, tokenizer, name=name)


def expert_options() -> type:
    from humanaes.models.expert.options import ExpertOptions

    return ExpertOptions


def tile_preprocessor(resolved: Resolved) -> TilePreprocessor | None:
    """The tiling settings, read from a preset or a local folder's config.json alone (None for
    a pretrained preset: its config comes with the downloaded weights)."""
    from humanaes.models.expert.processing import TilePreprocessor

    if resolved.name is not None:
        if not _read_preset(resolved.name).get("random_init"):
            return None
        return TilePreprocessor.from_config(preset_config(resolved.name))
    assert resolved.folder is not None
    data = _config_json(resolved.folder)
    if data is None:
        return None  # loading the model reports what is wrong with it
    if data.get("format") == FORMAT_NAME:
        return TilePreprocessor.from_config(HumanAesConfig.load(resolved.folder / "config.json"))
    from humanaes.models.expert.convert import config_from_internvl_chat

    return TilePreprocessor.from_config(config_from_internvl_chat(data, name=resolved.folder.name))


def save_expert(model_or_scorer: Any, folder: Path, tokenizer: Any = None) -> Path:
    """Save a HumanAesExpertModel (or a scorer's model and tokenizer) in humanaes format, atomically."""
    from humanaes.models.expert.checkpoint import save_humanaes
    from humanaes.models.expert.modeling import HumanAesExpertModel

    model = model_or_scorer
    if not isinstance(model, HumanAesExpertModel) and hasattr(model_or_scorer, "model"):
        model = model_or_scorer.model
        if tokenizer is None:
            tokenizer = getattr(model_or_scorer, "tokenizer", None)
    if not isinstance(model, HumanAesExpertModel):
        what = getattr(model_or_scorer, "name", None) or type(model_or_scorer).__name__
        raise CheckpointError(f"save_checkpoint saves HumanAesExpert models (or scorers from humanaes.load of one), not {what}")
    return save_humanaes(model, folder, tokenizer=tokenizer)


EXPERT_FAMILY = register_family(ModelFamily(
    name=FAMILY_NAME,
    package="humanaes.models.expert",
    folder_format=f"config.json with format {FORMAT_NAME!r} or model_type {ORIGINAL_MODEL_TYPE!r}",
    names=list_presets,
    claims_folder=claims_folder,
    load=load_scorer,
    list_models=list_models,
    preprocessor=tile_preprocessor,
    create=create_expert_model,
    save=save_expert,
    facts=expert_facts,
    # identity: the registry's default (a preset's name, a folder's absolute path or the hub id, and
    # ExpertOptions); the default mode depends on the checkpoint's trained heads, so it is "default"
    options_class=expert_options,
    hub_repos=True,
    folders_shadow_names=True,  # a checkpoint saved as ./humanaes-tiny loads, not the preset
    order=10,
))

__all__ = [
    "EXPERT_FAMILY", "create_expert_model", "get_preset", "list_presets", "load_expert_model", "preset_config",
]
