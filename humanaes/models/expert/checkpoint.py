"""Checkpoint I/O: the original InternVL2 / HumanAesExpert layout and our own format.

Our format is a folder with `config.json` (HumanAesConfig, `"format": "humanaes"`),
`model.safetensors` (every weight, heads and MetaVoter included) and the tokenizer files.

Models are built on the meta device and the checkpoint's tensors are assigned in place, so a
1B fp16 checkpoint loads in about its own size of RAM, with no fp32 round trip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from humanaes.errors import CheckpointError, ModelNotFoundError
from humanaes.fsutil import publish_dir, staging_dir
from humanaes.models.expert.config import FORMAT_NAME, HumanAesConfig
from humanaes.models.expert.convert import config_from_internvl_chat, convert_state_dict
from humanaes.models.expert.modeling import HumanAesExpertModel
from humanaes.safetensors_io import iter_safetensors, read_header

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Modules a real checkpoint may lack without harm: they are (re)initialised deterministically.
OPTIONAL_MODULES = ("metavoter.",)


# -- reading tensors ----------------------------------------------------------------------------

def weight_files(folder: Path) -> list[Path]:
    if (folder / INDEX_NAME).exists():
        try:
            weight_map = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{folder / INDEX_NAME} is not a sharded-weights index (no weight_map of file names)") from None
        # Shards live beside the index: a name with a folder part could point anywhere.
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in (".", "..")]
        if bad:
            raise CheckpointError(f"{folder / INDEX_NAME} names shard {bad[0]!r}; shards must be plain file names in {folder}")
        return [folder / name for name in names]
    if (folder / WEIGHTS_NAME).exists():
        return [folder / WEIGHTS_NAME]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise CheckpointError(f"no weights in {folder} (expected {WEIGHTS_NAME}, a sharded index, or pytorch_model*.bin)")


def checkpoint_keys(files: list[Path]) -> list[str]:
    keys: list[str] = []
    for file in files:
        if file.suffix == ".safetensors":
            keys.extend(read_header(file).names())
        else:
            keys.extend(torch.load(file, map_location="meta", weights_only=True, mmap=True).keys())
    return keys


def iter_tensors(files: list[Path], dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream tensors one at a time (cast each to `dtype` if given) to keep peak RAM low.

    Safetensors files go through `humanaes.safetensors_io` (header validated before any
    allocation, tensors read one by one into owned buffers: peak ~ the model plus one tensor).
    """
    for file in files:
        if file.suffix == ".safetensors":
            yield from iter_safetensors(file, dtype)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for key in list(state):
                yield key, _cast(state.pop(key).clone(), dtype)


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    return t


# -- building and filling models ---------------------------------------------------------------

def build_empty(config: HumanAesConfig, attn_implementation: str = "sdpa") -> HumanAesExpertModel:
    """The model with parameters on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return HumanAesExpertModel(config, attn_implementation=attn_implementation)


def fill(model: HumanAesExpertModel, state: dict[str, torch.Tensor], source: str) -> HumanAesExpertModel:
    """Assign `state` into a meta model; materialise buffers and optional modules; refuse gaps."""
    expected = dict(model.state_dict())
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {_short(unexpected)}")
    shapes = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if shapes:
        raise CheckpointError(f"{source}: shape mismatch for {_short([f'{k} {a} vs model {b}' for k, a, b in shapes])}")
    model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in expected if k not in state and not k.startswith(OPTIONAL_MODULES)]
    if missing:
        raise CheckpointError(
            f"{source}: missing keys {_short(missing)}; the checkpoint does not match this model's configuration"
        )
    _materialise(model)
    return model


def _materialise(model: HumanAesExpertModel) -> None:
    """Rebuild what is still on the meta device: rotary tables (computed, not stored) and
    optional modules the checkpoint did not carry (the MetaVoter of an official release)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                setattr(parent, child_name, type(child)(config=child.config))
    if any(p.is_meta for p in model.metavoter.parameters()) or any(b.is_meta for b in model.metavoter.buffers()):
        from humanaes.models.heads import MetaVoter

        model.metavoter = MetaVoter(model.config.metavoter.kind, model.config.metavoter.hidden)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointError(f"weights left uninitialised after loading: {_short(leftovers)}")


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# -- formats --------------------------------------------------------------------------------

def detect_format(folder: Path) -> str:
    """"humanaes" (ours), "internvl_chat" (original remote-code layout) or "bundled"."""
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelNotFoundError(f"{folder} has no config.json; it is not a model folder")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON ({exc})") from None
    if data.get("format") == FORMAT_NAME:
        return "humanaes"
    if data.get("model_type") == "internvl_chat":
        return "internvl_chat"
    raise CheckpointError(
        f"{folder} holds a model of type {data.get('model_type')!r}; expected a HumanAesExpert/InternVL2 checkpoint "
        "(model_type 'internvl_chat') or a humanaes checkpoint"
    )


def load_original(
    folder: Path, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa"
) -> tuple[HumanAesExpertModel, HumanAesConfig]:
    """Load an original-layout checkpoint natively. Heads present in the checkpoint are loaded
    (mapped by name and shape); a plain InternVL2 checkpoint gets no regression/expert head."""
    original = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = config_from_internvl_chat(original, name=folder.name)
    config.tokenizer = str(folder)
    files = weight_files(folder)
    keys = checkpoint_keys(files)
    config.heads.regression = any(k.startswith("language_model.lm_regression_head.") for k in keys)
    config.heads.expert = any(k.startswith("language_model.expert_head.") for k in keys)
    if config.heads.expert:
        _infer_expert_hidden(config, files)
    model = build_empty(config, attn_implementation)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = convert_state_dict(lambda: iter_tensors(files, dtype), config, expected)
    fill(model, state, str(folder))
    model.to_inference_dtype(dtype or _dtype_of(state))
    return model.eval(), config


def _infer_expert_hidden(config: HumanAesConfig, files: list[Path]) -> None:
    for key, tensor in iter_tensors(files):
        if key.startswith("language_model.expert_head.expert_head2.") and tensor.dim() == 2 and tensor.shape[1] == 5:
            config.heads.expert_hidden = int(tensor.shape[0])
            return


def _dtype_of(state: dict[str, torch.Tensor]) -> torch.dtype:
    for t in state.values():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def load_humanaes(
    folder: Path, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa"
) -> tuple[HumanAesExpertModel, HumanAesConfig]:
    config = HumanAesConfig.load(folder / "config.json")
    config.tokenizer = config.tokenizer_source(folder)
    model = build_empty(config, attn_implementation)
    state = dict(iter_tensors(weight_files(folder), dtype))
    fill(model, state, str(folder))
    model.to_inference_dtype(dtype or _dtype_of(state))
    return model.eval(), config


def save_humanaes(model: HumanAesExpertModel, folder: str | Path, tokenizer: Any = None) -> Path:
    """Save in our format. Written into a temporary folder and renamed, so an interrupted save
    never leaves a folder that looks complete (nor, on an error, the temporary one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(folder) as tmp:
        _write_humanaes(model, tmp, tokenizer)
        return publish_dir(tmp, folder)


def _write_humanaes(model: HumanAesExpertModel, tmp: Path, tokenizer: Any) -> None:
    """Write the weights, the config and (given one) the tokenizer into the staging folder `tmp`."""
    config = model.config
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # Views into one storage (e.g. split qkv) cannot be saved as separate safetensors entries.
    seen: set[tuple[int, int]] = set()
    for k, v in state.items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset())
        if v.untyped_storage().nbytes() != v.numel() * v.element_size() or ident in seen:
            state[k] = v.clone()
        seen.add(ident)
    save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    saved_config = HumanAesConfig.from_dict(config.to_dict())
    saved_config.torch_dtype = str(model.dtype).replace("torch.", "")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
        if not saved_config.packaged_tokenizer:
            saved_config.tokenizer = None  # the tokenizer lives beside the weights
    saved_config.save(tmp / "config.json")
