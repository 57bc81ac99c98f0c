"""The humanaes-mini family in the model registry: the small model shipped inside the package
(the default of `humanaes.load()`), and folders written by `save_bundled`.

Importing this module is cheap (the metadata JSON, no torch): loading imports the model.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from humanaes.errors import CheckpointError
from humanaes.modelinfo import ModelFacts
from humanaes.models.registry import LoadSettings, ModelEntry, ModelFamily, ModelIdentity, Resolved, register_family

if TYPE_CHECKING:
    from humanaes.models.mini.scorer import BundledScorer, MiniPreprocessor

FAMILY_NAME = "mini"
BUNDLED_NAME = "humanaes-mini"
META_FILE = f"{BUNDLED_NAME}.json"
WEIGHTS_FILE = f"{BUNDLED_NAME}.safetensors"


@lru_cache(maxsize=1)
def bundled_metadata() -> dict[str, Any]:
    """The bundled model's metadata JSON (description, licence, validation metrics); {} if absent."""
    meta = resources.files("humanaes.models.mini").joinpath(META_FILE)
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def bundled_score_meaning() -> str:
    metrics = bundled_metadata().get("val_metrics") or {}
    measured = ", ".join(
        f"{k.upper()} {metrics[k]:.3f}" for k in ("plcc", "srcc") if isinstance(metrics.get(k), (int, float))
    )
    return "facial attractiveness ratings of MEBeauty raters in [0, 1] (a proxy, NOT HumanAesExpert)" + (
        f"; MEBeauty val {measured}" if measured else ""
    )


def bundled_licence() -> str:
    # The metadata's licence text is long (it lists the ImageNet initialisations); its first
    # sentence is what a reader of a score needs.
    full = str(bundled_metadata().get("licence") or "weights derived from MEBeauty: non-commercial research use only")
    return full.split(". ")[0].rstrip(".")


def mini_facts(name: str) -> ModelFacts | None:
    if name != BUNDLED_NAME:
        return None
    return ModelFacts(name, f"{name}, the bundled proxy model (not HumanAesExpert)", bundled_score_meaning(),
                      bundled_licence(), True)


def list_models() -> list[ModelEntry]:
    return [ModelEntry(
        name=BUNDLED_NAME,
        family=FAMILY_NAME,
        kind="bundled (default, ships in the package)",
        description=str(bundled_metadata().get("description", "small CNN scorer shipped with humanaes")),
        score_meaning=bundled_score_meaning(),
        licence=bundled_licence(),
    )]


def claims_folder(folder: Path) -> bool:
    """A folder written by `save_bundled`: humanaes-mini.json beside humanaes-mini.safetensors."""
    return folder.is_dir() and (folder / META_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load_scorer(resolved: Resolved, settings: LoadSettings) -> BundledScorer:
    # The bundled model needs neither transformers nor PEFT: keep them unimported (seconds).
    from humanaes.models.mini.scorer import load_bundled

    return load_bundled(str(settings.device), path=resolved.folder, dtype=settings.dtype)


def mini_preprocessor(resolved: Resolved) -> MiniPreprocessor:
    """Built from the loaded model (about a second): only its face detector goes into the result."""
    from humanaes.models.mini.scorer import load_bundled

    return load_bundled("cpu", path=resolved.folder, dtype="float32").preprocessor()


def mini_identity(resolved: Resolved) -> ModelIdentity:
    """Name, the weights' checksum recorded in the metadata, and the scorer's typed options."""
    from humanaes.models.mini.scorer import BundledScorer

    if resolved.folder is None:
        meta = bundled_metadata()
    else:
        meta_path = resolved.folder / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # loading would refuse it too: say so before the job starts
            raise CheckpointError(f"{meta_path} cannot be read as the model's metadata ({exc})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{meta_path} is not the model's metadata (a JSON object)")
    return ModelIdentity(resolved.identity_name, meta.get("weights_sha256"), BundledScorer.default_mode,
                         BundledScorer.options_class)


def mini_options() -> type:
    from humanaes.models.mini.options import MiniOptions

    return MiniOptions


def refuse_save(model_or_scorer: Any, folder: Path, tokenizer: Any = None) -> Path:
    raise CheckpointError(
        f"save_checkpoint saves HumanAesExpert models; {BUNDLED_NAME} is the bundled model, which ships inside the "
        "package (load it with humanaes.load()) and has its own format (humanaes.models.mini.save_bundled)"
    )


MINI_FAMILY = register_family(ModelFamily(
    name=FAMILY_NAME,
    package="humanaes.models.mini",
    folder_format=f"{META_FILE} + {WEIGHTS_FILE}",
    names=lambda: (BUNDLED_NAME,),
    claims_folder=claims_folder,
    load=load_scorer,
    list_models=list_models,
    preprocessor=mini_preprocessor,
    save=refuse_save,
    facts=mini_facts,
    identity=mini_identity,
    options_class=mini_options,
    default_model=BUNDLED_NAME,
    order=0,  # the bundled name and its folders come first (see humanaes.models.registry)
))

__all__ = ["BUNDLED_NAME", "MINI_FAMILY", "bundled_licence", "bundled_metadata", "bundled_score_meaning"]
