"""The trainer's settings: `TrainerConfig` (one dataclass, key-checked, read from YAML/JSON).

Every other part of the trainer (engine, checkpoints, loop) reads its settings from here; the
DeepSpeed keys the engine derives from these settings are listed in `DEEPSPEED_DERIVED_KEYS` so
that a `deepspeed_config` cannot contradict them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humanaes.config_keys import check_keys, field_names
from humanaes.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
ZERO_STAGES = (1, 2)
#: DeepSpeed settings the engine derives from the trainer's own keys (deepspeed_config may not set them)
DEEPSPEED_DERIVED_KEYS = {
    "train_batch_size": "batch_size (per process) and grad_accum_steps",
    "train_micro_batch_size_per_gpu": "batch_size",
    "gradient_accumulation_steps": "grad_accum_steps",
    "gradient_clipping": "max_grad_norm",
    "optimizer": "lr, betas, eps, weight_decay (the trainer's AdamW is used)",
    "scheduler": "warmup_steps / warmup_ratio and min_lr_ratio (the trainer's cosine schedule is used)",
}


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
            for key, instead in DEEPSPEED_DERIVED_KEYS.items():
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

