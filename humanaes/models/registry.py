"""The model registry: `load`, `create_model`, `list_models`, `load_preprocessor` and
`save_checkpoint` for every registered model family.

A family is one subpackage of `humanaes.models` (`expert/`: HumanAesExpert, `mini/`: the bundled
humanaes-mini) that registers a `ModelFamily` when imported. The registry imports those
subpackages itself (pkgutil), so a third family is one new folder and nothing else. A family's
registration module stays light (no torch): its loaders import the heavy modules when called,
so `humanaes models` and `--help` stay instant and the bundled model never imports transformers.

Adding a family: create `humanaes/models/<family>/` whose `__init__.py` imports a light
`family.py` that calls `register_family(ModelFamily(...))` with its names, the folders it
claims, a loader returning a `humanaes.scorer.BaseScorer` subclass, and its `humanaes models`
rows (optionally: a weight-free preprocessor, random-init `create`, `save`, and the facts the
report prints). Nothing else in humanaes changes (tests/test_registry.py adds one that way).

Resolution order of `load(name_or_path)`:
  None                 the bundled default model (small CNN shipped in the package)
  a bundled name       that bundled model
  a preset name        random-init presets build in memory; pretrained ones resolve to their hub id
                       (a folder of the same name in the working directory wins over a preset)
  an existing folder   the first family that claims it: a bundled model (humanaes-mini.json +
                       weights), our HumanAesExpert format or the original InternVL2 layout
  "org/name"           a Hugging Face Hub repo (local cache first; download when online), then
                       read as a folder
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, overload

from humanaes.errors import CheckpointError, ModelNotFoundError
from humanaes.hints import hint

if TYPE_CHECKING:  # torch loads on first use: `humanaes models` and `--help` stay instant
    import torch

    from humanaes.modelinfo import ModelFacts
    from humanaes.models.expert.config import HumanAesConfig
    from humanaes.models.expert.modeling import HumanAesExpertModel
    from humanaes.scorer import BaseScorer, Preprocessor

BUNDLED_DEFAULT = "humanaes-mini"
BUNDLED_NAMES = (BUNDLED_DEFAULT,)


class _ModelRow(TypedDict):
    name: str
    family: str
    kind: str
    description: str
    score_meaning: str
    licence: str


class ModelEntry(_ModelRow, total=False):
    """One row of `list_models()` / `humanaes models`."""

    #: the typed options its scorer takes (`humanaes.options.describe_options`), when the family declares them
    options: list[dict[str, Any]]


@dataclass(frozen=True)
class Resolved:
    """What `name_or_path` names: a family and either one of its model names or a local folder."""

    family: ModelFamily
    #: the argument as the caller gave it ("" for None); scorers take their display name from it
    source: str
    #: a model name the family answers to (set when resolved by name)
    name: str | None = None
    #: a local folder (given, or a hub repo's snapshot) that the family claimed
    folder: Path | None = None

    @property
    def identity_name(self) -> str:
        """The name a job records (`ModelIdentity.name`): the model name, or the folder's
        absolute path (a resume from elsewhere still matches), else the argument as given."""
        return str(self.folder.absolute()) if self.folder is not None else (self.name or self.source)


@dataclass(frozen=True)
class LoadSettings:
    """The load-time settings `humanaes.load` passes to a family's loader (already checked)."""

    device: torch.device
    dtype: str | torch.dtype | None = "auto"
    attn_implementation: str | None = "auto"
    image_block_suffix: str | None = None


@dataclass(frozen=True)
class ModelIdentity:
    """What a job records about a model before (or without) loading its weights: the driver of a
    cluster job may have no GPU for them (`humanaes batch` fingerprints its job with this)."""

    #: the model name, or the absolute path of its folder (a resume from elsewhere still matches)
    name: str
    #: the weights' sha256 when it is cheap to know (recorded in the model's metadata), else None
    weights_sha256: str | None
    #: the mode a call without one runs; "default" when only the loaded model knows (its trained heads)
    default_mode: str
    #: the typed options its scorer takes (a `humanaes.options.ScoreOptions` subclass)
    options_class: type


@dataclass(frozen=True, eq=False, repr=False)
class ModelFamily:
    """How the registry serves one model family. Every callable is called only when needed; the
    heavy ones (`load`, `preprocessor`, `create`, `save`) import their modules inside."""

    #: the family's name in listings and messages, by convention its folder: "expert", "mini"
    name: str
    #: the Python package its classes live in: models and scorers from there belong to the family
    package: str
    #: what a folder of this family holds, for the error about a folder no family claims
    folder_format: str
    #: the model names it answers to (cheap: plain data)
    names: Callable[[], Sequence[str]]
    #: whether a local folder is in this family's format (cheap: looks at file names / JSON)
    claims_folder: Callable[[Path], bool]
    #: a scorer for a resolved name or folder
    load: Callable[[Resolved, LoadSettings], BaseScorer]
    #: the rows `humanaes models` shows (cheap: plain data)
    list_models: Callable[[], list[ModelEntry]]
    #: the decoding + preparation without the weights, or None when that needs the loaded model
    preprocessor: Callable[[Resolved], Preprocessor | None] | None = None
    #: a random-init model of a name (or a config object the family owns) with a seed
    create: Callable[..., torch.nn.Module] | None = None
    #: save a model (or a scorer of one) to a folder that `load` reads back; may refuse clearly
    save: Callable[[Any, Path, Any], Path] | None = None
    #: what a name's scores mean and its licence, or None for names it does not know
    facts: Callable[[str], ModelFacts | None] | None = None
    #: the typed options of its scorers (a light `humanaes.options.ScoreOptions` subclass: no torch)
    options_class: Callable[[], type] | None = None
    #: the model's identity without loading its weights (default: the name or folder, no checksum,
    #: mode "default", the family's `options_class`, else the base ScoreOptions)
    identity: Callable[[Resolved], ModelIdentity] | None = None
    #: whether Hugging Face repo ids name models of this family (a repo not fetched yet is taken
    #: to be one of them when only its identity is needed)
    hub_repos: bool = False
    #: whether a folder named like one of its names wins over that name (presets: yes)
    folders_shadow_names: bool = False
    #: the model `load()` with no argument gives (one family sets it)
    default_model: str | None = None
    #: families are consulted in this order (ties: by name), for names and for folders
    order: int = 100

    def __repr__(self) -> str:
        return f"ModelFamily({self.name!r}, package={self.package!r})"

    def claims_name(self, name: str) -> bool:
        if name not in self.names():
            return False
        return not (self.folders_shadow_names and Path(name).expanduser().exists())

    def owns(self, obj: Any) -> bool:
        """Whether a model or scorer object is one of this family's (by where its class lives)."""
        prefix = self.package + "."
        return any(cls.__module__ == self.package or cls.__module__.startswith(prefix) for cls in type(obj).__mro__)


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry (called by the family's package when it is imported).

    Registering the same name again from the same package replaces it (a reload); a second
    package claiming a taken name is a bug and fails loudly."""
    known = _FAMILIES.get(family.name)
    if known is not None and known.package != family.package:
        raise ValueError(f"model family {family.name!r} is registered by {known.package} already (not {family.package})")
    _FAMILIES[family.name] = family
    return family


def families() -> list[ModelFamily]:
    """Every registered family, in resolution order. Imports the subpackages of
    `humanaes.models` that are not imported yet (each registers its family on import)."""
    import humanaes.models as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg and f"{package.__name__}.{module.name}" not in sys.modules:
            importlib.import_module(f"{package.__name__}.{module.name}")
    return sorted(_FAMILIES.values(), key=lambda f: (f.order, f.name))


def get_family(name: str) -> ModelFamily:
    for family in families():
        if family.name == name:
            return family
    raise ModelNotFoundError(f"unknown model family {name!r}; families: {', '.join(f.name for f in families())}")


def model_names() -> list[str]:
    """Every registered model name, in resolution order."""
    return [name for family in families() for name in family.names()]


def resolve(name_or_path: str | os.PathLike | None, *, fetch: bool = True) -> Resolved:
    """The family and the name or folder that `name_or_path` means (see the module docstring).

    `fetch=False` does not look up hub repos (a ModelNotFoundError instead of a download)."""
    found = families()
    if name_or_path is None:
        default = next((f for f in found if f.default_model), None)
        if default is None or default.default_model is None:
            raise ModelNotFoundError("no default model is registered; pass a model name or folder")
        return Resolved(default, "", name=default.default_model)
    source = os.fspath(name_or_path)
    for family in found:
        if family.claims_name(source):
            return Resolved(family, source, name=source)
    path = Path(source).expanduser()
    if not path.exists():
        if not _looks_like_hub_id(source):
            raise ModelNotFoundError(
                f"model {source!r} not found: it is not a folder, a model name ({', '.join(model_names())}) "
                "or a Hugging Face repo id"
            )
        if not fetch:
            raise ModelNotFoundError(f"model {source!r} is a Hugging Face repo id that is not fetched here")
        path = resolve_hub(source)
    return Resolved(_folder_family(path, found), source, folder=path)


def model_identity(name_or_path: str | os.PathLike | None) -> ModelIdentity:
    """The identity of a model (see ModelIdentity) without loading it and without downloading:
    a hub repo that is not in a local folder is asked of the family that takes hub repos."""
    try:
        resolved = resolve(name_or_path, fetch=False)
    except ModelNotFoundError:
        source = os.fspath(name_or_path) if name_or_path is not None else ""
        hub_family = next((f for f in families() if f.hub_repos), None)
        if hub_family is None or not _looks_like_hub_id(source):
            raise
        resolved = Resolved(hub_family, source)
    family = resolved.family
    if family.identity is not None:
        return family.identity(resolved)
    from humanaes.options import ScoreOptions

    options_class = family.options_class() if family.options_class is not None else ScoreOptions
    return ModelIdentity(resolved.identity_name, None, "default", options_class)


def _folder_family(path: Path, found: list[ModelFamily]) -> ModelFamily:
    if path.is_file():
        raise ModelNotFoundError(f"{path} is a file; pass the model folder that holds config.json and the weights")
    if not any(path.iterdir()):
        raise ModelNotFoundError(f"{path} is an empty folder; download the model into it first")
    for family in found:
        if family.claims_folder(path):
            return family
    tried = "; ".join(f"{f.name} ({f.folder_format})" for f in found)
    raise ModelNotFoundError(f"{path} is not a model folder: no model family claims it (tried {tried})")


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = "auto",
    apply_exif: bool = True,
    image_block_suffix: str | None = None,
    threads: int | str | None = "auto",
) -> BaseScorer:
    """Load a scorer by name, folder or hub id (see module docstring).

    `threads` sets PyTorch's CPU threads when the model runs on the CPU: "auto" (the default)
    picks `humanaes.runtime.default_threads()` from how busy the machine is while the model
    loads, an int forces that many, None leaves PyTorch's setting alone.
    """
    from humanaes.runtime import CpuLoadProbe, apply_threads, resolve_device

    probe = CpuLoadProbe()  # measured over the load: no extra wait
    dev = resolve_device(device)
    resolved = resolve(name_or_path)
    settings = LoadSettings(dev, dtype, attn_implementation, image_block_suffix)
    scorer = resolved.family.load(resolved, settings)
    scorer.apply_exif = apply_exif  # the default of the apply_exif option; a call may still pass its own
    if dev.type == "cpu":
        apply_threads(threads, probe)
    return scorer


def load_preprocessor(name_or_path: str | os.PathLike | None = None) -> Preprocessor | None:
    """The decoding + preparation of model `name_or_path` (a `humanaes.scorer.Preprocessor`)
    without its heavy weights, or None when that needs the loaded model: a hub id (nothing is
    downloaded here), a name or folder no family knows (loading the model reports what is
    wrong), or a family without a weight-free preprocessor."""
    try:
        resolved = resolve(name_or_path, fetch=False)
    except ModelNotFoundError:
        return None
    if resolved.family.preprocessor is None:
        return None
    return resolved.family.preprocessor(resolved)


@overload
def create_model(
    name_or_config: HumanAesConfig, *, seed: int | None = None, attn_implementation: str = "sdpa"
) -> HumanAesExpertModel: ...


@overload
def create_model(
    name_or_config: str, *, seed: int | None = None, attn_implementation: str = "sdpa"
) -> torch.nn.Module: ...


def create_model(
    name_or_config: str | HumanAesConfig, *, seed: int | None = None, attn_implementation: str = "sdpa"
) -> torch.nn.Module:
    """A randomly initialised model of a registered name's architecture (seeded), e.g. for
    training from scratch, tests and benchmarks; a HumanAesConfig builds a HumanAesExpertModel.
    For trained weights use `load`."""
    # A name belongs to the family that lists it; a config object to the family it comes from.
    family = _family_of_name(name_or_config) if isinstance(name_or_config, str) else _owner(name_or_config)
    if family is None:
        raise ModelNotFoundError(f"create_model takes a model name or a family's config, not {type(name_or_config).__name__}")
    if family.create is None:
        raise ModelNotFoundError(
            f"{family.name} models cannot be created with random weights; load the trained one with humanaes.load"
        )
    return family.create(name_or_config, seed=seed, attn_implementation=attn_implementation)


def _family_of_name(name: str) -> ModelFamily:
    """The family a registered model name belongs to (folders do not count)."""
    for family in families():
        if name in family.names():
            return family
    raise ModelNotFoundError(f"unknown model name {name!r}; registered names: {', '.join(model_names())}")


def list_models() -> list[ModelEntry]:
    """Every registered model (one row per name): what its scores mean, its weights' licence and
    the typed options its scorer takes."""
    from humanaes.options import describe_options

    rows: list[ModelEntry] = []
    for family in families():
        options = describe_options(family.options_class()) if family.options_class is not None else None
        for entry in family.list_models():
            rows.append(entry if options is None else ModelEntry(**entry, options=options))
    return rows


def model_facts(name: str) -> ModelFacts | None:
    """What a registered family says about the model a result row names, or None."""
    for family in families():
        facts = family.facts(name) if family.facts is not None else None
        if facts is not None:
            return facts
    return None


def save_checkpoint(model_or_scorer: Any, folder: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Save a model (or the model and tokenizer of a scorer from `load`) in its family's
    format, atomically; `load(folder)` reads it back. The family decides: HumanAesExpert saves,
    the bundled humanaes-mini ships inside the package and says how it is saved instead."""
    family = _owner(model_or_scorer)
    if family is None:
        what = getattr(model_or_scorer, "name", None) or type(model_or_scorer).__name__
        saving = ", ".join(f.name for f in families() if f.save is not None)
        raise CheckpointError(
            f"save_checkpoint saves models of the registered families ({saving}) or scorers from humanaes.load of "
            f"one, not {what}"
        )
    if family.save is None:
        raise CheckpointError(f"{family.name} models cannot be saved with save_checkpoint")
    return family.save(model_or_scorer, Path(folder), tokenizer)


def _owner(obj: Any) -> ModelFamily | None:
    """The family of a model, of a scorer (or its `.model`), or of an object named like one of its models."""
    found = families()
    for candidate in (obj, getattr(obj, "model", None)):
        if candidate is not None:
            for family in found:
                if family.owns(candidate):
                    return family
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return next((f for f in found if name in f.names()), None)
    return None


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = "auto",
) -> tuple[HumanAesExpertModel, Any]:
    """Old name of `humanaes.models.expert.family.load_expert_model` (a HumanAesExpertModel and its tokenizer)."""
    from humanaes.models.expert.family import load_expert_model

    return load_expert_model(name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation)


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


def _is_bundled_folder(path: Path) -> bool:
    """A folder written by humanaes.models.mini.save_bundled (humanaes-mini.json + weights)."""
    return _family_of_name(BUNDLED_DEFAULT).claims_folder(path)


def __getattr__(name: str) -> Any:
    # The HumanAesExpert presets moved into their family (humanaes.models.expert.family); their
    # old home here keeps working without importing that family before it is needed.
    if name in ("list_presets", "get_preset", "preset_config"):
        return getattr(importlib.import_module("humanaes.models.expert.family"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # list_presets, get_preset and preset_config still import from here (see __getattr__)
    "BUNDLED_DEFAULT", "LoadSettings", "ModelEntry", "ModelFamily", "Resolved", "create_model", "families",
    "get_family", "list_models", "load", "load_model", "load_preprocessor", "model_names", "register_family",
    "resolve", "resolve_hub", "save_checkpoint",
]
