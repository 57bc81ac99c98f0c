"""A small, model-agnostic training loop.

The model supplies `compute_loss(batch) -> dict` with a scalar tensor under "loss" and any other
(scalar) terms to log. The trainer owns everything else: data order, AdamW with weight-decay
groups, cosine schedule with linear warm-up, gradient accumulation and clipping, autocast
(fp32 / bf16, fp16 with a GradScaler on CUDA), seeding, optional EMA of the weights, periodic
evaluation with a user function and best-checkpoint selection, JSONL (+ TensorBoard when
importable) logging, a tqdm bar, and checkpoints that resume exactly.

Checkpoint layout (one folder per checkpoint, under `<output_dir>/checkpoints/`):

    step-00000120/
        model.safetensors      model weights (safetensors)
        ema.safetensors        EMA weights, when EMA is on
        optimizer.pt           optimizer, scheduler, grad-scaler state (torch.save)
        rng.pt                 python / numpy / torch (+ CUDA) RNG states
        trainer_state.json     step, epoch, position in the epoch, best metric, config

A checkpoint is written into `<name>.tmp-<pid>` and renamed into place only once every file is
there, so a folder with a final name is always complete (`trainer_state.json` is written last
too). `best/` holds the best checkpoint by `metric_for_best`, replaced the same way.

All device handling (placement, autocast, backward, unscale/clip/step) lives in `_Engine`, the
one place a distributed launcher (accelerate) would plug into.

DeepSpeed ZeRO (stage 1 or 2, `zero_stage`, when `deepspeed` is installed): `_Engine` hands our
AdamW groups and cosine LambdaLR to `deepspeed.initialize`, which then owns backward, gradient
reduction, clipping, the optimizer and scheduler steps and the optimizer-state partitions. The
model is still called through `compute_loss` (ZeRO 1-2 only hook gradients, never the forward).
Its checkpoints hold, instead of `optimizer.pt`, a `deepspeed/` folder written by every rank with
the engine's own `save_checkpoint` (model states, one optimizer partition per rank, scheduler);
rank 0 adds the full fp32 trainable weights as `model.safetensors`, `rng.pt` and
`trainer_state.json`, then publishes the folder with the same rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from humanaes.config_keys import check_keys, field_names
from humanaes.errors import CheckpointError, ConfigError, HumanAesError
from humanaes.fsutil import publish_dir

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIM_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own checkpoint (a tag folder) inside ours
ZERO_STAGES = (1, 2)
# DeepSpeed settings the trainer derives from its own keys (deepspeed_config may not set them)
_DS_OWNED = {
    "train_batch_size": "batch_size (per process) and grad_accum_steps",
    "train_micro_batch_size_per_gpu": "batch_size",
    "gradient_accumulation_steps": "grad_accum_steps",
    "gradient_clipping": "max_grad_norm",
    "optimizer": "lr, betas, eps, weight_decay (the trainer's AdamW is used)",
    "scheduler": "warmup_steps / warmup_ratio and min_lr_ratio (the trainer's cosine schedule is used)",
}
PRECISIONS = ("fp32", "bf16", "fp16")


class TrainingOOMError(HumanAesError):
    """The accelerator ran out of memory; the message says what to lower."""


# -- configuration ---------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    """Everything the loop needs. Load from YAML/JSON with `TrainerConfig.from_file`."""

    output_dir: str = "runs/train"
    seed: int = 42
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; caps `epochs` when set
    batch_size: int = 16  # micro-batch size
    grad_accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # parameter-name prefix -> learning-rate multiplier (e.g. {"backbone.": 0.1})
    lr_scale: dict[str, float] = field(default_factory=dict)
    warmup_steps: int | None = None  # takes precedence over warmup_ratio
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default
    num_workers: int = 0
    drop_last: bool = True
    ema_decay: float | None = None  # e.g. 0.999; evaluation and `best` then use the EMA weights
    log_every_steps: int = 10
    eval_every_steps: int | None = None
    eval_every_epochs: int | None = 1
    save_every_steps: int | None = None
    save_every_epochs: int | None = 1
    keep_last: int = 2  # step checkpoints kept (best is kept separately)
    metric_for_best: str | None = None  # a key of the eval function's dict
    greater_is_better: bool = True
    resume_from: str | None = None  # None | "auto" (latest in output_dir) | a checkpoint folder
    progress_bar: bool = True
    tensorboard: bool = True  # when torch.utils.tensorboard is importable
    # DeepSpeed ZeRO stage (1 or 2; needs `pip install deepspeed`); None trains without DeepSpeed
    zero_stage: int | None = None
    # extra DeepSpeed config merged over the one derived from the keys above (needs zero_stage)
    deepspeed_config: dict[str, Any] | None = None

    @classmethod
    def valid_keys(cls) -> list[str]:
        return field_names(cls)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainerConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"trainer config must be a mapping, got {type(data).__name__}")
        check_keys(cls, data, "trainer config")
        values = dict(data)
        for key in ("lr", "weight_decay", "eps", "warmup_ratio", "min_lr_ratio", "max_grad_norm", "ema_decay"):
            # YAML 1.1 reads `lr: 1e-4` as a string; users mean the number.
            if isinstance(values.get(key), str):
                try:
                    values[key] = float(values[key])
                except ValueError:
                    raise ConfigError(f"trainer config {key!r} must be a number, got {values[key]!r}") from None
        if "betas" in values and values["betas"] is not None:
            values["betas"] = tuple(float(b) for b in values["betas"])
        if isinstance(values.get("zero_stage"), str) and values["zero_stage"].strip().isdigit():
            values["zero_stage"] = int(values["zero_stage"])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike, section: str | None = None) -> "TrainerConfig":
        """Read a YAML (.yaml/.yml) or JSON file; `section` picks a top-level key."""
        data = load_config_file(path)
        if section is not None:
            if section not in data:
                raise ConfigError(f"{path}: no {section!r} section; found: {', '.join(map(str, data))}")
            data = data[section]
        return cls.from_dict(data or {})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    def validate(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every_steps"):
            positive(name)
        for name in ("max_steps", "eval_every_steps", "eval_every_epochs", "save_every_steps", "save_every_epochs"):
            positive(name, allow_none=True)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay!r}")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last must be at least 1, got {self.keep_last!r}")
        if self.zero_stage is not None and (isinstance(self.zero_stage, bool) or self.zero_stage not in ZERO_STAGES):
            raise ConfigError(
                f"zero_stage must be 1, 2 or null, got {self.zero_stage!r} (ZeRO-3 shards the weights, which "
                "models trained through compute_loss cannot use here)"
            )
        if self.deepspeed_config is not None:
            if self.zero_stage is None:
                raise ConfigError("deepspeed_config is set but zero_stage is not; set zero_stage: 2 (or 1) to use DeepSpeed")
            if not isinstance(self.deepspeed_config, Mapping):
                raise ConfigError(f"deepspeed_config must be a mapping, got {type(self.deepspeed_config).__name__}")
            for key, instead in _DS_OWNED.items():
                if key in self.deepspeed_config:
                    raise ConfigError(f"deepspeed_config may not set {key!r}: the trainer derives it from {instead}")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML or JSON config file into a dict (ConfigError on bad syntax)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:  # pragma: no cover - pyyaml is in the train extra
                raise ConfigError(f"{path}: reading YAML needs PyYAML; pip install 'humanaes[train]'") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, Exception) as exc:  # yaml.YAMLError is not a ValueError
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse config ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


# -- seeding and RNG state ---------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# -- data order -----------------------------------------------------------------------------


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start part-way through (for exact resume)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, *, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0  # position in the global order
        # Under DDP every rank sees the same global order; global batch k (batch_size x world
        # items) is cut into world slices and rank r takes slice r, so N processes with a
        # micro-batch of B train on exactly the batches one process with N x B would.
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def _mine(self) -> list[int]:
        rest = self.order()[self.start :]
        if self.world_size == 1:
            return rest
        b, w, r = self.batch_size, self.world_size, self.rank
        usable = len(rest) - len(rest) % (b * w)  # every rank gets the same number of batches
        return [i for k in range(0, usable, b * w) for i in rest[k + r * b : k + (r + 1) * b]]

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


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


# -- device / precision / step: the one place a distributed launcher plugs into ---------------


class _Engine:
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


def _oom_message(config: TrainerConfig, step: int) -> str:
    return (
        f"CUDA ran out of memory at step {step} with batch_size={config.batch_size}: lower batch_size "
        f"(raise grad_accum_steps={config.grad_accum_steps} to keep the effective batch), lower the input "
        f"size / sequence length, or use precision 'bf16'"
    )


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or "CUDA out of memory" in str(exc)


# -- checkpoint files -------------------------------------------------------------------------


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _save_weights(state: Mapping[str, torch.Tensor], path: Path) -> None:
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


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from humanaes.safetensors_io import load_safetensors

    return load_safetensors(path)


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
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
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


# -- the trainer ------------------------------------------------------------------------------


EvalFn = Callable[[nn.Module], Mapping[str, float]]


class Trainer:
    """Train `model` on `train_data` (a Dataset) batched by `collate_fn`.

    eval_fn(model) -> {metric: value} is called with the model in eval mode (EMA weights loaded
    when EMA is on) every `eval_every_steps` / `eval_every_epochs`, and at the end.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainerConfig,
        train_data: Dataset,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        eval_fn: EvalFn | None = None,
    ):
        if not callable(getattr(model, "compute_loss", None)):
            raise ConfigError(f"{type(model).__name__} has no compute_loss(batch) method; the trainer needs one")
        config.validate()
        if config.metric_for_best is not None and eval_fn is None:
            raise ConfigError("metric_for_best is set but no eval_fn was given")
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        seed_everything(config.seed)
        self.engine = _Engine(config)
        self.model = model.to(self.engine.device)
        self.train_data = train_data
        self.collate_fn = collate_fn
        self.eval_fn = eval_fn
        self.output_dir = Path(config.output_dir)
        world = self.engine.world_size
        self.sampler = EpochSampler(len(train_data), config.seed, rank=self.engine.rank, world_size=world,  # type: ignore[arg-type]
                                    batch_size=config.batch_size)
        global_batch = config.batch_size * world
        micro = (len(train_data) // global_batch if config.drop_last or world > 1  # type: ignore[arg-type]
                 else math.ceil(len(train_data) / global_batch))  # type: ignore[arg-type]
        if micro < 1:
            raise ConfigError(f"the training set ({len(train_data)} items) is smaller than batch_size={config.batch_size}")  # type: ignore[arg-type]
        self.micro_per_epoch = micro
        self.steps_per_epoch = math.ceil(micro / config.grad_accum_steps)
        total = self.steps_per_epoch * config.epochs
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        self.warmup_steps = (
            config.warmup_steps if config.warmup_steps is not None else int(round(config.warmup_ratio * self.total_steps))
        )
        groups = param_groups(self.model, config)
        self.group_names = [g.pop("names") for g in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
        total_steps, warmup, floor = self.total_steps, self.warmup_steps, config.min_lr_ratio
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, total_steps, warmup, floor)
        )
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay else None
        self.engine.prepare(self.model, self.optimizer, self.scheduler)  # DeepSpeed engine when zero_stage is set
        self._best_pending = False  # under DeepSpeed: rank 0 found a new best; all ranks save it
        # progress
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch
        self.micro_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.last_eval: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []  # logged rows of this process
        self._tb = None
        self._log_file = None

    # -- public -------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run (or resume) training to the end. Returns a summary dict."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        resume = self.config.resume_from
        if resume:
            path = latest_checkpoint(self.output_dir) if resume == "auto" else Path(resume)
            if path is not None:
                self.load_checkpoint(path)
            elif resume != "auto":
                raise CheckpointError(f"resume_from {resume!r} does not exist")
        self._open_logs()
        try:
            self._loop()
        finally:
            self._close_logs()
        self.engine.barrier()
        self.engine.close()
        return {
            "steps": self.step,
            "epochs": self.epoch,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "last_eval": self.last_eval,
        }

    def evaluate(self) -> dict[str, float]:
        """Run eval_fn (EMA weights when on), log it, update `best` (under DeepSpeed the training
        loop writes `best/`, on every rank, right after this rank-0 evaluation)."""
        if self.eval_fn is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        ctx = self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad(), self.engine.eval_autocast():
                metrics = {k: float(v) for k, v in dict(self.eval_fn(self.model)).items()}
        finally:
            self.model.train(was_training)
        self.last_eval = metrics
        self._log({"kind": "eval", **{f"eval/{k}": v for k, v in metrics.items()}})
        key = self.config.metric_for_best
        if key is not None:
            if key not in metrics:
                raise ConfigError(
                    f"metric_for_best {key!r} is not among the eval metrics: {', '.join(sorted(metrics))}"
                )
            value = metrics[key]
            better = (
                self.best_metric is None
                or (value > self.best_metric if self.config.greater_is_better else value < self.best_metric)
            )
            if better and not math.isnan(value):
                self.best_metric, self.best_step = value, self.step
                if self.engine.collective_checkpoints:
                    self._best_pending = True  # evaluation runs on rank 0; the loop saves on all ranks
                else:
                    self.save_checkpoint(self.output_dir / BEST_DIR)
        return metrics

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write a complete checkpoint atomically (temp folder, then rename).

        Under DeepSpeed every rank must call it (each writes its optimizer partition); otherwise
        only rank 0 does."""
        final = Path(path) if path is not None else self.output_dir / CHECKPOINT_DIR / f"step-{self.step:08d}"
        collective = self.engine.collective_checkpoints
        # one temporary folder for all ranks: rank 0's pid names it
        tmp = final.with_name(f"{final.name}.tmp-{self.engine.broadcast_object(os.getpid()) if collective else os.getpid()}")
        if self.engine.is_main or not collective:
            final.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        if collective:
            self.engine.barrier()
            self.engine.save_deepspeed(tmp)  # model states, optimizer partitions, scheduler
            weights = self.engine.full_state_dict(self.model)  # collective in 16 bits
            if not self.engine.is_main:
                return final
        else:
            weights = self.model.state_dict()
        _save_weights(weights, tmp / MODEL_FILE)
        if self.ema is not None:
            _save_weights(self.ema.shadow, tmp / EMA_FILE)
        if not collective:
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.engine.scaler.state_dict() if self.engine.scaler is not None else None,
                },
                tmp / OPTIM_FILE,
            )
        torch.save(_rng_state(), tmp / RNG_FILE)
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "micro_in_epoch": self.micro_in_epoch,
            "total_steps": self.total_steps,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "last_eval": self.last_eval,
            "config": self.config.to_dict(),
            "world_size": self.engine.world_size,
            "zero_stage": self.config.zero_stage,
            "time": time.time(),
        }
        _write_json_atomic(tmp / STATE_FILE, state)  # last: marks the folder complete
        return publish_dir(tmp, final)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, EMA, optimizer, scheduler, scaler, RNG and data position."""
        path = Path(path)
        if not is_complete_checkpoint(path):
            raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE}); pick another one")
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        written_by_ds = (path / DEEPSPEED_DIR).is_dir()
        if self.engine.ds is not None:
            if not written_by_ds:
                raise CheckpointError(f"{path} was written without DeepSpeed (no {DEEPSPEED_DIR}/); resume it "
                                      "without trainer.zero_stage, or start a fresh run")
            saved_world = int(state.get("world_size") or 1)
            if saved_world != self.engine.world_size:
                raise CheckpointError(
                    f"{path} was written by {saved_world} DeepSpeed processes and ZeRO's optimizer partitions "
                    f"resume only with as many; launch {saved_world} (now {self.engine.world_size})"
                )
            self.engine.load_deepspeed(path)  # collective: module, optimizer partition, scheduler
        elif written_by_ds and not (path / OPTIM_FILE).is_file() and self.engine.zero_stage is None:
            raise CheckpointError(f"{path} was written under DeepSpeed ZeRO-{state.get('zero_stage')}; resume it with "
                                  f"trainer.zero_stage={state.get('zero_stage')} and {state.get('world_size')} processes")
        weights = _load_weights(path / MODEL_FILE)  # fp32 trainable weights (DeepSpeed's masters)
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit the model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
            )
        if self.ema is not None:
            if not (path / EMA_FILE).is_file():
                raise CheckpointError(f"{path}: EMA is on but the checkpoint has no {EMA_FILE}")
            for k, v in _load_weights(path / EMA_FILE).items():
                self.ema.shadow[k] = v.to(self.ema.shadow[k].device)
        if self.engine.zero_stage is None:
            optim = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(optim["optimizer"])
            self.scheduler.load_state_dict(optim["scheduler"])
            if self.engine.scaler is not None and optim.get("scaler"):
                self.engine.scaler.load_state_dict(optim["scaler"])
        # else: DeepSpeed restored optimizer and scheduler above, or (after fit released its engine)
        # only the weights and progress are wanted, e.g. to export `best/`
        _set_rng_state(torch.load(path / RNG_FILE, map_location="cpu", weights_only=True))
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.micro_in_epoch = int(state["micro_in_epoch"])
        self.best_metric = state.get("best_metric")
        self.best_step = state.get("best_step")
        self.last_eval = state.get("last_eval") or {}
        logger.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)

    # -- internals ----------------------------------------------------------------------

    @property
    def is_main_process(self) -> bool:
        """True on the process that logs, evaluates and writes checkpoints (rank 0)."""
        return self.engine.is_main

    def _loader(self) -> DataLoader:
        self.sampler.set_position(self.epoch, self.micro_in_epoch * self.config.batch_size * self.engine.world_size)
        g = torch.Generator()
        g.manual_seed(self.config.seed + self.epoch)
        return DataLoader(
            self.train_data,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            collate_fn=self.collate_fn,
            num_workers=self.config.num_workers,
            drop_last=self.config.drop_last,
            generator=g,
            pin_memory=self.engine.device.type == "cuda",
        )

    def _loop(self) -> None:
        cfg = self.config
        bar = None
        if cfg.progress_bar and self.engine.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True)
        self.model.train()
        running: dict[str, float] = {}
        running_n = 0
        t0 = time.time()
        try:
            while self.step < self.total_steps and self.epoch < cfg.epochs:
                accum: list[dict[str, torch.Tensor]] = []
                for batch in self._loader():
                    remaining_micro = self.micro_per_epoch - self.micro_in_epoch
                    # size of the current accumulation group (a short one ends the epoch)
                    group = min(cfg.grad_accum_steps, len(accum) + remaining_micro)
                    terms = self._micro_step(batch, group, boundary=len(accum) + 1 >= group)
                    self.micro_in_epoch += 1
                    accum.append(terms)
                    if len(accum) < group:
                        continue
                    try:
                        norm = self.engine.step(self.model, self.optimizer)
                    except RuntimeError as exc:
                        if _is_oom(exc):
                            raise TrainingOOMError(_oom_message(cfg, self.step)) from None
                        raise
                    if not self.engine.steps_scheduler:
                        self.scheduler.step()
                    self.step += 1
                    if self.ema is not None:
                        self.ema.update(self.model, self.step)
                    for k in accum[0]:
                        running[k] = running.get(k, 0.0) + sum(float(t[k]) for t in accum) / len(accum)
                    running_n += 1
                    accum = []
                    if self.micro_in_epoch >= self.micro_per_epoch:
                        self.epoch += 1
                        self.micro_in_epoch = 0
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{running.get('loss', 0.0) / max(1, running_n):.4f}", epoch=self.epoch)
                    if self.step % cfg.log_every_steps == 0 or self.step == self.total_steps:
                        keys = list(running)
                        row = dict(zip(keys, self.engine.average([running[k] / running_n for k in keys])))
                        row.update(lr=cfg.lr * self.scheduler.lr_lambdas[0](self.step - 1), grad_norm=norm, elapsed_s=time.time() - t0)
                        self._log({"kind": "train", **row})
                        running, running_n = {}, 0
                    self._maybe_eval_and_save(epoch_end=self.micro_in_epoch == 0)
                    if self.step >= self.total_steps:
                        break
                    if self.micro_in_epoch == 0:
                        break  # epoch finished: new loader, new order
                else:
                    # the loader ran out (can only happen when it yields fewer batches than expected)
                    if self.micro_in_epoch:
                        self.epoch += 1
                        self.micro_in_epoch = 0
        finally:
            if bar is not None:
                bar.close()
        final = self.output_dir / CHECKPOINT_DIR / f"step-{self.step:08d}"
        if self.engine.collective_checkpoints:  # every rank writes its part; rank 0 decides
            if not self.engine.broadcast_object(final.exists()):
                self.save_checkpoint()
                if self.engine.is_main:
                    self._prune()
        elif self.engine.is_main and not final.exists():
            self.save_checkpoint()
            self._prune()

    def _micro_step(self, batch: Any, group: int, boundary: bool = True) -> dict[str, torch.Tensor]:
        try:
            batch = self.engine.to_device(batch)
            with self.engine.autocast():
                out = self.model.compute_loss(batch)
            if not isinstance(out, Mapping) or "loss" not in out:
                raise ConfigError(f"{type(self.model).__name__}.compute_loss must return a dict with a 'loss' tensor")
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                raise HumanAesError(
                    f"the loss became {float(loss.detach())} at step {self.step}; lower lr (now {self.config.lr}) "
                    f"or use precision fp32"
                )
            self.engine.backward(loss / group, boundary=boundary)
        except RuntimeError as exc:
            if _is_oom(exc):
                raise TrainingOOMError(_oom_message(self.config, self.step)) from None
            raise
        return {k: v.detach().float().mean() for k, v in out.items() if isinstance(v, torch.Tensor)}

    def _maybe_eval_and_save(self, epoch_end: bool) -> None:
        cfg = self.config
        last = self.step >= self.total_steps
        do_eval = self.eval_fn is not None and (
            last
            or (cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0)
            or (epoch_end and cfg.eval_every_epochs and self.epoch % cfg.eval_every_epochs == 0)
        )
        if do_eval and self.engine.is_main:
            self.evaluate()
        if do_eval and self.engine.collective_checkpoints and self.engine.broadcast_object(self._best_pending):
            self.save_checkpoint(self.output_dir / BEST_DIR)  # every rank writes its optimizer partition
        self._best_pending = False
        do_save = (
            last
            or (cfg.save_every_steps and self.step % cfg.save_every_steps == 0)
            or (epoch_end and cfg.save_every_epochs and self.epoch % cfg.save_every_epochs == 0)
        )
        if do_save:
            if self.engine.is_main or self.engine.collective_checkpoints:
                self.save_checkpoint()
            if self.engine.is_main:
                self._prune()
            self.engine.barrier()

    def _prune(self) -> None:
        found = list_checkpoints(self.output_dir)
        for old in found[: max(0, len(found) - self.config.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    def _open_logs(self) -> None:
        if not self.engine.is_main:
            return
        self._log_file = open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = None

    def _close_logs(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _log(self, row: dict[str, Any]) -> None:
        row = {"step": self.step, "epoch": self.epoch, **row}
        self.history.append(row)
        if self._log_file is not None:
            self._log_file.write(json.dumps(row) + "\n")
            self._log_file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(k if "/" in k else f"train/{k}", v, self.step)
        if row.get("kind") == "eval":
            logger.info("step %d eval: %s", self.step, {k: v for k, v in row.items() if k.startswith("eval/")})
