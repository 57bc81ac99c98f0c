"""A small, model-agnostic trainer: the public entry point of humanaes' training loop.

The model supplies `compute_loss(batch) -> dict` with a scalar tensor under "loss" and any other
(scalar) terms to log. The trainer owns everything else: data order, AdamW with weight-decay
groups, cosine schedule with linear warm-up, gradient accumulation and clipping, autocast
(fp32 / bf16, fp16 with a GradScaler on CUDA), seeding, optional EMA of the weights, periodic
evaluation with a user function and best-checkpoint selection, JSONL (+ TensorBoard when
importable) logging, a tqdm bar, checkpoints that resume exactly, DDP and DeepSpeed ZeRO 1-2.

It lives in four modules, one concern each; import from here (every name below is re-exported):

    humanaes.training.config        TrainerConfig (settings, key-checked), load_config_file
    humanaes.training.engine        Engine (device, precision, DDP, DeepSpeed), optimizer and
                                    schedule, EMA, seeding, out-of-memory handling
    humanaes.training.checkpoints   checkpoint layout, atomic write and exact resume
    humanaes.training.loop          Trainer (the loop, evaluation hook, logging), EpochSampler
"""

from __future__ import annotations

from humanaes.training.checkpoints import (
    BEST_DIR,
    CHECKPOINT_DIR,
    DEEPSPEED_DIR,
    EMA_FILE,
    MODEL_FILE,
    OPTIM_FILE,
    RNG_FILE,
    STATE_FILE,
    is_complete_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    save_weights,
)
from humanaes.training.config import PRECISIONS, ZERO_STAGES, TrainerConfig, load_config_file
from humanaes.training.engine import (
    EMA,
    Engine,
    TrainingOOMError,
    cosine_with_warmup,
    param_groups,
    seed_everything,
)
from humanaes.training.loop import EpochSampler, EvalFn, Trainer

__all__ = [
    "BEST_DIR", "CHECKPOINT_DIR", "DEEPSPEED_DIR", "EMA", "EMA_FILE", "Engine", "EpochSampler", "EvalFn",
    "MODEL_FILE", "OPTIM_FILE", "PRECISIONS", "RNG_FILE", "STATE_FILE", "Trainer", "TrainerConfig",
    "TrainingOOMError", "ZERO_STAGES", "cosine_with_warmup", "is_complete_checkpoint", "latest_checkpoint",
    "list_checkpoints", "load_config_file", "load_weights", "param_groups", "save_weights", "seed_everything",
]
