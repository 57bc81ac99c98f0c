"""Where the trainer meets the hardware: device, precision, data parallelism (DDP semantics) and
DeepSpeed ZeRO, plus the optimizer, the learning-rate schedule and the EMA of the weights.

`Engine` is the one place a distributed launcher plugs into. Under `torchrun` or `accelerate
launch` (WORLD_SIZE > 1) it joins the process group and averages gradients across ranks before
each optimizer step.

DeepSpeed ZeRO (stage 1 or 2, `zero_stage`, when `deepspeed` is installed): `Engine.prepare` hands
our AdamW groups and cosine LambdaLR to `deepspeed.initialize`, which then owns backward, gradient
reduction, clipping, the optimizer and scheduler steps and the optimizer-state partitions. The
model is still called through `compute_loss` (ZeRO 1-2 only hook gradients, never the forward).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from humanaes.errors import CheckpointError, ConfigError, HumanAesError
from humanaes.training.config import TrainerConfig

DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own checkpoint (a tag folder) inside ours


class TrainingOOMError(HumanAesError):
    """The accelerator ran out of memory; the message says what to lower."""


# -- seeding ------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- learning rate --------------------------------------------------------------------------


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then cosine 1 -> `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, config: TrainerConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and normalisation weights (any 0-/1-d tensor);
    `lr_scale` multiplies the lr of parameters whose name starts with a given prefix."""
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    prefixes = sorted(config.lr_scale, key=len, reverse=True)  # longest prefix wins
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((config.lr_scale[p] for p in prefixes if name.startswith(p)), 1.0)
        no_decay = param.ndim <= 1 or name.endswith(".bias")
        key = (scale, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": config.lr * scale,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    if not groups:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    # `names` is for humans; torch ignores unknown group keys but keep the state dict lean.
    return [dict(g) for _, g in sorted(groups.items())]


def build_optimizer(model: nn.Module, config: TrainerConfig, total_steps: int, warmup_steps: int,
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, list[list[str]]]:
    """AdamW over `param_groups` and its cosine-with-warm-up schedule; also returns each group's
    parameter names (kept apart: torch would store them in every optimizer checkpoint)."""
    groups = param_groups(model, config)
    group_names = [g.pop("names") for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    floor = config.min_lr_ratio
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, total_steps, warmup_steps, floor)
    )
    return optimizer, scheduler, group_names


# -- EMA -----------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of the floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm-up of the decay so early averages are not dominated by the initial weights
        decay = min(self.decay, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.lerp_(value.detach().to(shadow.dtype), 1.0 - decay)
            else:
                shadow.copy_(value)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the EMA weights into `model`."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)


# -- device / precision / step -------------------------------------------------------------------


class Engine:
    """Device placement, precision, backward/step, and data parallelism (DDP semantics).

    Under `torchrun` or `accelerate launch` (WORLD_SIZE > 1 in the environment) it joins the
    process group (NCCL on CUDA, gloo on CPU) and averages gradients across ranks before each
    optimizer step: the same update DDP makes, for any model with a compute_loss method.

    With `zero_stage` set, `prepare` wraps model, optimizer and scheduler in a DeepSpeed engine
    (`self.ds`), and backward / step / checkpoint state go through it (see the module docstring).
    """

    def __init__(self, config: TrainerConfig):
        self.config = config
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        name = config.device
        if name == "auto":
            name = f"cuda:{local_rank}" if torch.cuda.is_available() and self.world_size > 1 else (
                "cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device {config.device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r} asked for but CUDA is not available; use device: cpu")
        self.precision = config.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("precision fp16 needs CUDA (it uses a GradScaler); use bf16 or fp32 on this device")
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.zero_stage = config.zero_stage
        self.ds: Any = None  # the DeepSpeed engine, once `prepare` built it
        self._param_dtypes: list[tuple[nn.Parameter, torch.dtype]] = []
        if self.zero_stage is not None:
            self._import_deepspeed(local_rank)
        # DeepSpeed does its own (dynamic) loss scaling for fp16
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" and self.zero_stage is None else None
        self.owns_process_group = False
        if self.world_size > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
                # DeepSpeed caches groups built on it for the life of the process: keep it then
                self.owns_process_group = self.zero_stage is None
            self.rank = dist.get_rank()
        elif self.zero_stage is not None:
            import torch.distributed as dist

            # DeepSpeed needs a process group even for one process: a local one, no ports
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo",
                                        store=dist.HashStore(), rank=0, world_size=1)  # kept, as above

    def _import_deepspeed(self, local_rank: int) -> None:
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed picks its accelerator
        os.environ.setdefault("LOCAL_RANK", str(local_rank))  # deepspeed.initialize insists on it
        try:
            import deepspeed
            from deepspeed.accelerator import get_accelerator
        except ImportError:
            raise ConfigError(
                f"zero_stage={self.zero_stage} needs DeepSpeed, which is not installed; pip install deepspeed "
                "(or humanaes[deepspeed]), or remove trainer.zero_stage to train without it"
            ) from None
        ds_device = get_accelerator().device_name()
        if ds_device != self.device.type:
            raise ConfigError(
                f"DeepSpeed runs on its {ds_device!r} accelerator but the trainer device is {str(self.device)!r}; "
                f"set DS_ACCELERATOR={self.device.type} in the environment or change trainer.device"
            )
        if self.device.type == "cuda" and self.device.index is not None and self.device.index != local_rank:
            raise ConfigError(f"under DeepSpeed each process uses cuda:LOCAL_RANK (cuda:{local_rank}), not "
                              f"{str(self.device)!r}; use device: auto")
        self._deepspeed = deepspeed

    def deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed config derived from the trainer config, with `deepspeed_config` merged over it."""
        cfg = self.config
        derived: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": cfg.grad_accum_steps,
            "gradient_clipping": float(cfg.max_grad_norm or 0.0),  # 0: no clipping
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16"},
            "steps_per_print": 2**31 - 1,  # the trainer does the logging
            "wall_clock_breakdown": False,
        }
        merged = _deep_merge(derived, cfg.deepspeed_config or {})
        zero = merged.get("zero_optimization")
        stage = zero.get("stage") if isinstance(zero, Mapping) else None
        if stage != cfg.zero_stage:
            raise ConfigError(f"deepspeed_config sets zero_optimization.stage={stage!r} but zero_stage is "
                              f"{cfg.zero_stage}; set only zero_stage")
        for name in ("bf16", "fp16"):
            section = merged.get(name)
            enabled = section.get("enabled", False) if isinstance(section, Mapping) else section
            if bool(enabled) != (self.precision == name):
                raise ConfigError(f"deepspeed_config {name}.enabled={enabled!r} contradicts precision "
                                  f"{self.precision!r}; set the trainer's precision instead")
        return merged

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Under DeepSpeed: build its engine around our model, AdamW and LambdaLR (no-op otherwise)."""
        if self.zero_stage is None:
            return
        self._param_dtypes = [(p, p.dtype) for p in model.parameters()]
        self.ds, _, _, _ = self._deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.deepspeed_config(),
            dist_init_required=False,
        )

    @property
    def steps_scheduler(self) -> bool:
        """True when the engine steps the lr scheduler itself (DeepSpeed does, after each update)."""
        return self.ds is not None

    @property
    def collective_checkpoints(self) -> bool:
        """True when every rank takes part in writing and reading checkpoints (DeepSpeed's partitions)."""
        return self.ds is not None

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's value of `obj` on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def eval_autocast(self) -> contextlib.AbstractContextManager:
        """Evaluation runs under autocast only when DeepSpeed holds the weights in 16 bits."""
        return self.autocast() if self.ds is not None and self.dtype is not None else contextlib.nullcontext()

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """model.state_dict(), with DeepSpeed's fp32 master values for the trainable parameters when
        it trains in 16 bits. Collective under DeepSpeed 16-bit: every rank must call it."""
        state = model.state_dict()
        if self.ds is None or self.dtype is None:
            return state
        from deepspeed.utils import safe_get_full_fp32_param

        master: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad:
                full = safe_get_full_fp32_param(p)
                if full is not None:
                    master[name] = full
        return {k: master.get(k, v) for k, v in state.items()}

    def save_deepspeed(self, folder: Path) -> None:
        """Every rank writes its part of DeepSpeed's checkpoint into folder/deepspeed/."""
        self.ds.save_checkpoint(str(folder), tag=DEEPSPEED_DIR, save_latest=False)

    def load_deepspeed(self, folder: Path) -> None:
        """Every rank reads back module, optimizer partition and scheduler from folder/deepspeed/."""
        load_path, _ = self.ds.load_checkpoint(str(folder), tag=DEEPSPEED_DIR, load_module_strict=True,
                                               load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"{folder}: DeepSpeed could not load its checkpoint from {folder / DEEPSPEED_DIR}")

    def _release_deepspeed(self) -> None:
        """Give the model back as it came: 16-bit-cast parameters return to their own dtype (the
        trainable ones with the fp32 master values) and DeepSpeed's gradient hooks are removed."""
        if self.dtype is not None:
            from deepspeed.utils import safe_get_full_fp32_param

            for p, dtype in self._param_dtypes:
                full = safe_get_full_fp32_param(p) if p.requires_grad else None
                if full is not None:
                    p.data = full.detach().to(dtype)
                elif p.dtype != dtype:
                    p.data = p.data.to(dtype)
        destroy = getattr(self.ds, "destroy", None)
        if callable(destroy):
            destroy()
        self.ds = None
        self._param_dtypes = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def average(self, values: list[float]) -> list[float]:
        """Mean of scalars over ranks (for logging)."""
        if self.world_size == 1 or not values:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def sync_gradients(self, model: nn.Module) -> None:
        """All-reduce the mean gradient in one flat buffer (DDP's averaging, without hooks)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def close(self) -> None:
        if self.ds is not None:
            self._release_deepspeed()
        if self.owns_process_group:
            import torch.distributed as dist

            # Every rank reaches this point before any tears gloo down: a rank that destroys its
            # group while a peer still talks to it can abort the peer ("terminate called without
            # an active exception", seen on a loaded 2-core machine).
            dist.barrier()
            dist.destroy_process_group()
            self.owns_process_group = False

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, Mapping):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(v) for v in batch)
        return batch

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, boundary: bool = True) -> None:
        """`boundary`: this micro-batch is the last of its accumulation group (DeepSpeed reduces then)."""
        if self.ds is not None:
            self.ds.set_gradient_accumulation_boundary(boundary)
            self.ds.backward(loss, scale_wrt_gas=False)  # the trainer already divided by the group size
            return
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float | None:
        """Unscale, clip, optimizer step, zero grads. Returns the pre-clip grad norm."""
        if self.ds is not None:  # reduction, clipping, step, zero_grad and the scheduler step
            self.ds.step()
            ds_norm = self.ds.get_global_grad_norm()
            return None if ds_norm is None else float(ds_norm)
        norm = None
        self.sync_gradients(model)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.config.max_grad_norm is not None:
            params = [p for p in model.parameters() if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def oom_message(config: TrainerConfig, step: int) -> str:
    """What to lower when the accelerator ran out of memory at `step`."""
    return (
        f"CUDA ran out of memory at step {step} with batch_size={config.batch_size}: lower batch_size "
        f"(raise grad_accum_steps={config.grad_accum_steps} to keep the effective batch), lower the input "
        f"size / sequence length, or use precision 'bf16'"
    )


def is_oom(exc: BaseException) -> bool:
    """True for torch's out-of-memory error (whatever its class is called in this torch version)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or "CUDA out of memory" in str(exc)

