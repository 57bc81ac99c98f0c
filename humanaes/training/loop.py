"""The training loop: data order, micro-batches with gradient accumulation, the evaluation hook
with best-checkpoint selection, periodic checkpoints, and logging (JSONL, TensorBoard, tqdm).

`Trainer` drives; the hardware side (device, precision, DDP/DeepSpeed, optimizer step) is
`humanaes.training.engine.Engine` and the files are `humanaes.training.checkpoints`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from humanaes.errors import CheckpointError, ConfigError, HumanAesError
from humanaes.training.checkpoints import (
    BEST_DIR,
    CHECKPOINT_DIR,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from humanaes.training.config import TrainerConfig
from humanaes.training.engine import (
    EMA,
    Engine,
    TrainingOOMError,
    build_optimizer,
    is_oom,
    oom_message,
    seed_everything,
)

logger = logging.getLogger(__name__)


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


# -- logging --------------------------------------------------------------------------------------


class RunLog:
    """Where logged rows go on rank 0: `<output_dir>/metrics.jsonl` (appended, flushed per row)
    and TensorBoard scalars when torch.utils.tensorboard is importable and wanted."""

    def __init__(self, output_dir: Path, *, tensorboard: bool):
        self._file: IO[str] | None = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(output_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = None

    def write(self, row: Mapping[str, Any], step: int) -> None:
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
        self.engine = Engine(config)
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
        self.optimizer, self.scheduler, self.group_names = build_optimizer(
            self.model, config, self.total_steps, self.warmup_steps)
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
        self._run_log: RunLog | None = None  # rank 0 only, while fit() runs

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
        if self.engine.is_main:
            self._run_log = RunLog(self.output_dir, tensorboard=self.config.tensorboard)
        try:
            self._loop()
        finally:
            if self._run_log is not None:
                self._run_log.close()
                self._run_log = None
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
        """Write a complete checkpoint atomically (temp folder, then rename); see
        humanaes.training.checkpoints for the layout.

        Under DeepSpeed every rank must call it (each writes its optimizer partition); otherwise
        only rank 0 does."""
        final = Path(path) if path is not None else self._step_dir()
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
        }
        return write_checkpoint(final, engine=self.engine, model=self.model, ema=self.ema,
                                optimizer=self.optimizer, scheduler=self.scheduler, state=state)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, EMA, optimizer, scheduler, scaler, RNG and data position."""
        path = Path(path)
        state = read_checkpoint(path, engine=self.engine, model=self.model, ema=self.ema,
                                optimizer=self.optimizer, scheduler=self.scheduler)
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
                    with self._oom_as_error():
                        norm = self.engine.step(self.model, self.optimizer)
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
        saved = self._step_dir().exists()  # the last step's checkpoint, unless the loop wrote it
        if self.engine.collective_checkpoints:
            saved = self.engine.broadcast_object(saved)  # rank 0 decides for every rank
        if not saved:
            self._save_step_checkpoint()

    def _micro_step(self, batch: Any, group: int, boundary: bool = True) -> dict[str, torch.Tensor]:
        with self._oom_as_error():
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
            self._save_step_checkpoint()
            self.engine.barrier()

    def _step_dir(self) -> Path:
        return self.output_dir / CHECKPOINT_DIR / f"step-{self.step:08d}"

    def _save_step_checkpoint(self) -> None:
        """This step's checkpoint (rank 0 alone, or every rank under DeepSpeed), then rank 0
        prunes the old ones."""
        if self.engine.is_main or self.engine.collective_checkpoints:
            self.save_checkpoint()
        if self.engine.is_main:
            prune_checkpoints(self.output_dir, self.config.keep_last)

    @contextlib.contextmanager
    def _oom_as_error(self) -> Iterator[None]:
        """torch's out-of-memory error -> TrainingOOMError saying what to lower."""
        try:
            yield
        except RuntimeError as exc:
            if is_oom(exc):
                raise TrainingOOMError(oom_message(self.config, self.step)) from None
            raise

    def _log(self, row: dict[str, Any]) -> None:
        row = {"step": self.step, "epoch": self.epoch, **row}
        self.history.append(row)
        if self._run_log is not None:
            self._run_log.write(row, self.step)
        if row.get("kind") == "eval":
            logger.info("step %d eval: %s", self.step, {k: v for k, v in row.items() if k.startswith("eval/")})
