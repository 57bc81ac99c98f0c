"""Training checkpoints on disk: their layout, and writing and reading them whole.

One folder per checkpoint, under `<output_dir>/checkpoints/`:

    step-00000120/
        model.safetensors      model weights (safetensors)
        ema.safetensors        EMA weights, when EMA is on
        optimizer.pt           optimizer, scheduler, grad-scaler state (torch.save)
        rng.pt                 python / numpy / torch (+ CUDA) RNG states
        trainer_state.json     step, epoch, position in the epoch, best metric, config

A checkpoint is written into `<name>.tmp-<pid>` and published under its final name
(`fsutil.publish_dir`) only once every file is there, so a folder with a final name is always
complete (`trainer_state.json` is written last too, atomically). `best/` holds the best
checkpoint by `metric_for_best`, replaced the same way.

Under DeepSpeed the folder holds, instead of `optimizer.pt`, a `deepspeed/` folder written by
every rank with the engine's own `save_checkpoint` (model states, one optimizer partition per
rank, scheduler); rank 0 adds the full fp32 trainable weights as `model.safetensors`, `rng.pt`
and `trainer_state.json`, then publishes the folder with the same rename.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from humanaes.errors import CheckpointError
from humanaes.fsutil import atomic_write, publish_dir
from humanaes.training.engine import DEEPSPEED_DIR, EMA, Engine

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIM_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"

__all__ = [
    "BEST_DIR", "CHECKPOINT_DIR", "DEEPSPEED_DIR", "EMA_FILE", "MODEL_FILE", "OPTIM_FILE", "RNG_FILE", "STATE_FILE",
    "is_complete_checkpoint", "latest_checkpoint", "list_checkpoints", "load_weights", "prune_checkpoints",
    "read_checkpoint", "save_weights", "write_checkpoint",
]


# -- RNG state ------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's state holds an ndarray; store it as a tensor so weights_only loading works
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, keys, internal = state["python"]
    random.setstate((version, tuple(keys), internal))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files ----------------------------------------------------------------------------------------


def save_weights(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors (on CPU; tied tensors stored once per key)."""
    from safetensors.torch import save_file

    seen: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        ptr = value.data_ptr() if value.numel() else -1
        if ptr in seen and ptr != -1:  # tied weights are stored once per key (copied)
            tensor = tensor.clone()
        seen[ptr] = key
        tensors[key] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's safetensors file through the one validating reader."""
    from humanaes.safetensors_io import load_safetensors

    return load_safetensors(path)


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True for a published checkpoint folder (not a temporary one, state file present)."""
    path = Path(path)
    return path.is_dir() and ".tmp-" not in path.name and (path / STATE_FILE).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete step checkpoints under output_dir, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete step checkpoint under output_dir, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (`best/` is not among them)."""
    found = list_checkpoints(output_dir)
    for old in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)


# -- a whole checkpoint ------------------------------------------------------------------------


def write_checkpoint(final: Path, *, engine: Engine, model: nn.Module, ema: EMA | None,
                     optimizer: torch.optim.Optimizer, scheduler: Any, state: Mapping[str, Any]) -> Path:
    """Write a complete checkpoint into a temporary folder, then publish it as `final`.

    `state` (progress, config) goes into trainer_state.json with the time. Under DeepSpeed every
    rank must call this (each writes its optimizer partition); otherwise only rank 0 does."""
    collective = engine.collective_checkpoints
    # one temporary folder for all ranks: rank 0's pid names it
    tmp = final.with_name(f"{final.name}.tmp-{engine.broadcast_object(os.getpid()) if collective else os.getpid()}")
    if engine.is_main or not collective:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    if collective:
        engine.barrier()
        engine.save_deepspeed(tmp)  # model states, optimizer partitions, scheduler
        weights = engine.full_state_dict(model)  # collective in 16 bits
        if not engine.is_main:
            return final
    else:
        weights = model.state_dict()
    save_weights(weights, tmp / MODEL_FILE)
    if ema is not None:
        save_weights(ema.shadow, tmp / EMA_FILE)
    if not collective:
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
            },
            tmp / OPTIM_FILE,
        )
    torch.save(_rng_state(), tmp / RNG_FILE)
    # last: a trainer_state.json marks the folder complete
    atomic_write(tmp / STATE_FILE, json.dumps({**state, "time": time.time()}, indent=2, sort_keys=True))
    return publish_dir(tmp, final)


def read_checkpoint(path: Path, *, engine: Engine, model: nn.Module, ema: EMA | None,
                    optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore model, EMA, optimizer, scheduler, grad scaler and RNG from `path`; returns its
    trainer_state.json (progress) for the caller to take up."""
    if not is_complete_checkpoint(path):
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE}); pick another one")
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    written_by_ds = (path / DEEPSPEED_DIR).is_dir()
    if engine.ds is not None:
        if not written_by_ds:
            raise CheckpointError(f"{path} was written without DeepSpeed (no {DEEPSPEED_DIR}/); resume it "
                                  "without trainer.zero_stage, or start a fresh run")
        saved_world = int(state.get("world_size") or 1)
        if saved_world != engine.world_size:
            raise CheckpointError(
                f"{path} was written by {saved_world} DeepSpeed processes and ZeRO's optimizer partitions "
                f"resume only with as many; launch {saved_world} (now {engine.world_size})"
            )
        engine.load_deepspeed(path)  # collective: module, optimizer partition, scheduler
    elif written_by_ds and not (path / OPTIM_FILE).is_file() and engine.zero_stage is None:
        raise CheckpointError(f"{path} was written under DeepSpeed ZeRO-{state.get('zero_stage')}; resume it with "
                              f"trainer.zero_stage={state.get('zero_stage')} and {state.get('world_size')} processes")
    weights = load_weights(path / MODEL_FILE)  # fp32 trainable weights (DeepSpeed's masters)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    if ema is not None:
        if not (path / EMA_FILE).is_file():
            raise CheckpointError(f"{path}: EMA is on but the checkpoint has no {EMA_FILE}")
        for k, v in load_weights(path / EMA_FILE).items():
            ema.shadow[k] = v.to(ema.shadow[k].device)
    if engine.zero_stage is None:
        optim = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        if engine.scaler is not None and optim.get("scaler"):
            engine.scaler.load_state_dict(optim["scaler"])
    # else: DeepSpeed restored optimizer and scheduler above, or (after fit released its engine)
    # only the weights and progress are wanted, e.g. to export `best/`
    _set_rng_state(torch.load(path / RNG_FILE, map_location="cpu", weights_only=True))
    return state
