"""humanaes-mini checkpoints: `<dir>/humanaes-mini.safetensors` + `<dir>/humanaes-mini.json`.

The JSON holds the configuration (one model's `config`, or an ensemble's `members`, `tta_flip`,
`crop_fraction` and optional `face`), the weights' sha256 and free metadata (licence, training,
metrics). Format versions:

1. one CNN;
2. optional face branch, weights may be stored in float16;
3. the heads are the classes shared with HumanAesExpert (`humanaes.models.heads`), whose
   tensors have other names: files of versions 1 and 2 (the packaged model among them) are
   renamed on load by the table `LEGACY_HEAD_KEYS`, nothing else about them changes.

Loading is strict: after the rename every tensor of the file must be one the model has, with
its shape, and every tensor of the model must be in the file; anything else is a CheckpointError.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from humanaes.errors import CheckpointError, ModelNotFoundError
from humanaes.fsutil import atomic_write, file_sha256
from humanaes.models.mini.config import FaceConfig, MiniConfig
from humanaes.models.mini.family import BUNDLED_NAME, META_FILE, WEIGHTS_FILE
from humanaes.models.mini.modeling import FaceBranch, HumanAesMini, MiniEnsemble

FORMAT = "humanaes-mini"
FORMAT_VERSION = 3

#: Format <= 2 -> format 3: tensor names inside one HumanAesMini (an ensemble's members carry
#: them under `members.<i>.`). The regression head was a bare Linear and the parents of the
#: expert head and the MetaVoter's net were Sequentials (Linear, GELU, Linear). Every other
#: tensor (backbone, expert_head1, metavoter.net, face branch) kept its name.
LEGACY_HEAD_KEYS: dict[str, str] = {
    "regression_head.weight": "regression_head.linear.weight",
    "regression_head.bias": "regression_head.linear.bias",
    "expert_head.expert_head2.0.weight": "expert_head.expert_head2.fc1.weight",
    "expert_head.expert_head2.0.bias": "expert_head.expert_head2.fc1.bias",
    "expert_head.expert_head2.2.weight": "expert_head.expert_head2.fc2.weight",
    "expert_head.expert_head2.2.bias": "expert_head.expert_head2.fc2.bias",
    "expert_head.expert_head3.0.weight": "expert_head.expert_head3.fc1.weight",
    "expert_head.expert_head3.0.bias": "expert_head.expert_head3.fc1.bias",
    "expert_head.expert_head3.2.weight": "expert_head.expert_head3.fc2.weight",
    "expert_head.expert_head3.2.bias": "expert_head.expert_head3.fc2.bias",
    "expert_head.expert_head4.0.weight": "expert_head.expert_head4.fc1.weight",
    "expert_head.expert_head4.0.bias": "expert_head.expert_head4.fc1.bias",
    "expert_head.expert_head4.2.weight": "expert_head.expert_head4.fc2.weight",
    "expert_head.expert_head4.2.bias": "expert_head.expert_head4.fc2.bias",
}
#: The last format whose files need `LEGACY_HEAD_KEYS`.
LEGACY_HEAD_KEYS_UNTIL = 2


def _cnn_prefixes(model: HumanAesMini | MiniEnsemble) -> list[str]:
    """Where each HumanAesMini's tensors sit in the model's state dict."""
    if isinstance(model, MiniEnsemble):
        return [f"members.{i}." for i in range(len(model.members))]
    return [""]


def rename_legacy_keys(state: Mapping[str, torch.Tensor], prefixes: list[str], source: str) -> dict[str, torch.Tensor]:
    """`state` of a format <= 2 file with `LEGACY_HEAD_KEYS` applied under each prefix."""
    renames = {prefix + old: prefix + new for prefix in prefixes for old, new in LEGACY_HEAD_KEYS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = renames.get(key, key)
        if new in out:  # the file holds a tensor under both its old and its new name
            raise CheckpointError(f"{source}: tensor {new!r} is stored twice (as {key!r} too); the file is damaged")
        out[new] = value
    return out


def check_state_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, *, what: str = "humanaes-mini") -> None:
    """Strict fit: the same tensor names as `model`, each with the model's shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {what} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, the model has {tuple(own[key].shape)}")


def save_bundled(
    model: HumanAesMini | MiniEnsemble, directory: str | os.PathLike, meta: dict[str, Any] | None = None,
    *, storage_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `<dir>/humanaes-mini.safetensors` and `<dir>/humanaes-mini.json`, each atomically
    (weights first: a save interrupted between the two is refused on load by the checksum).

    A single model's JSON has `config`; an ensemble's has `members` (one config each, weights
    under `members.<i>.`), `tta_flip` and, with a face branch, `face` (weights under `face.`).
    `storage_dtype=torch.float16` halves the file (the package's size budget); loading casts
    back to float32, and the reported metrics are measured on the stored weights."""
    from safetensors.torch import save

    if model.inference_optimized:
        raise CheckpointError("cannot save a humanaes-mini model after optimize_for_inference(); save the original")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(storage_dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    blob = save(state, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    weights = atomic_write(directory / WEIGHTS_FILE, blob)
    data: dict[str, Any] = {"name": BUNDLED_NAME, "format": FORMAT, "format_version": FORMAT_VERSION}
    if isinstance(model, MiniEnsemble):
        data["members"] = [m.config.to_dict() for m in model.members]
        data["tta_flip"] = model.config.tta_flip
        data["crop_fraction"] = model.config.crop_fraction
        if model.face is not None:
            data["face"] = model.face.config.to_dict()
    else:
        data["config"] = model.config.to_dict()
    data["weights_dtype"] = str(storage_dtype).removeprefix("torch.")
    data["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    data.update(meta or {})
    atomic_write(directory / META_FILE, json.dumps(data, indent=2) + "\n")
    return weights


def _build(meta: dict[str, Any]) -> HumanAesMini | MiniEnsemble:
    if "members" in meta:
        configs = [MiniConfig.from_dict(c) for c in meta["members"]]
        ensemble = MiniEnsemble(configs, tta_flip=bool(meta.get("tta_flip", False)), crop_fraction=meta.get("crop_fraction"))
        if meta.get("face") is not None:
            ensemble.attach_face(FaceBranch(FaceConfig.from_dict(meta["face"])))
        return ensemble
    return HumanAesMini(MiniConfig.from_dict(meta["config"]))


def load_mini_model(
    directory: str | os.PathLike | None = None, device: str = "cpu", *, optimize: bool = False
) -> tuple[HumanAesMini | MiniEnsemble, dict[str, Any]]:
    """Load a humanaes-mini model (the packaged one when `directory` is None); `optimize`
    folds BatchNorm and uses channels-last (inference only)."""
    from humanaes.safetensors_io import load_safetensors

    with resources.as_file(resources.files("humanaes.models.mini")) as pkg_dir:
        base = Path(directory) if directory is not None else Path(pkg_dir)
        weights, meta_path = base / WEIGHTS_FILE, base / META_FILE
        if not weights.is_file() or not meta_path.is_file():
            raise ModelNotFoundError(
                f"{base} has no {WEIGHTS_FILE} + {META_FILE}; reinstall humanaes or train them with recipes/train_bundled.py"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); reinstall humanaes") from None
        try:
            version = int(meta.get("format_version", 1))  # the first files had no version
        except (TypeError, ValueError):
            version = -1
        if meta.get("format") != FORMAT or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(
                f"{meta_path} is format {meta.get('format')!r} v{meta.get('format_version')}, "
                f"this humanaes reads {FORMAT!r} v1 to v{FORMAT_VERSION}; upgrade humanaes"
            )
        expected = meta.get("weights_sha256")
        if expected and file_sha256(weights) != expected:
            raise CheckpointError(f"{weights} does not match the checksum in {META_FILE} (corrupt file?); reinstall humanaes")
        model = _build(meta)
        state = load_safetensors(weights)
    if version <= LEGACY_HEAD_KEYS_UNTIL:
        state = rename_legacy_keys(state, _cnn_prefixes(model), str(weights))
    check_state_fits(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    if optimize:
        model.optimize_for_inference()
    return model, meta


#: the name this loader had before the registry (kept for callers of `load_model`)
load_model = load_mini_model

