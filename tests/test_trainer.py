"""humanaes.training.trainer: learning, exact resume, config errors, atomic checkpoints (all tiny, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from humanaes.errors import CheckpointError, ConfigError
from humanaes.training.trainer import (
    MODEL_FILE,
    OPTIM_FILE,
    STATE_FILE,
    Trainer,
    TrainerConfig,
    TrainingOOMError,
    cosine_with_warmup,
    is_complete_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    param_groups,
)


class Regressor(nn.Module):
    """y = w.x + b through a small MLP with dropout and a norm (exercises RNG + no-decay groups)."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
        self.calls = 0
        self.fail_at: int | None = None
        self.fail_with: BaseException | None = None

    def compute_loss(self, batch):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise self.fail_with or RuntimeError("simulated crash")
        pred = self.net(batch["x"]).squeeze(1)
        mse = torch.mean((pred - batch["y"]) ** 2)
        return {"loss": mse, "mse": mse.detach(), "mean_pred": pred.mean().detach()}


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, dim: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.tensor([0.5, -1.0, 2.0, 0.25]) + 0.3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def noisy_collate(items):
    """Collate with a random perturbation from the global RNG (must be restored on resume)."""
    x = torch.stack([it["x"] for it in items])
    y = torch.stack([it["y"] for it in items])
    return {"x": x + 0.01 * torch.randn_like(x), "y": y}


def make_config(tmp_path: Path, name: str, **kw) -> TrainerConfig:
    base = dict(
        output_dir=str(tmp_path / name),
        seed=7,
        epochs=3,
        batch_size=8,
        grad_accum_steps=2,
        lr=3e-2,
        weight_decay=0.01,
        warmup_steps=2,
        max_grad_norm=1.0,
        log_every_steps=1,
        eval_every_epochs=1,
        save_every_steps=3,
        save_every_epochs=None,
        keep_last=10,
        ema_decay=0.9,
        progress_bar=False,
        tensorboard=False,
        device="cpu",
    )
    base.update(kw)
    return TrainerConfig(**base)


def train_losses(path: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def eval_fn_for(data: Synthetic):
    @torch.no_grad()
    def eval_fn(model):
        pred = model.net(data.x).squeeze(1)
        return {"mse": float(torch.mean((pred - data.y) ** 2)), "neg_mse": -float(torch.mean((pred - data.y) ** 2))}

    return eval_fn


def test_tiny_regression_learns(tmp_path):
    data = Synthetic(128)
    cfg = make_config(tmp_path, "learn", epochs=25, grad_accum_steps=1, ema_decay=None, save_every_steps=None,
                      eval_every_epochs=5, metric_for_best="neg_mse")
    model = Regressor()
    before = eval_fn_for(data)(model.eval())["mse"]
    trainer = Trainer(model, cfg, data, collate_fn=noisy_collate, eval_fn=eval_fn_for(data))
    summary = trainer.fit()
    after = eval_fn_for(data)(model.eval())["mse"]
    assert summary["steps"] == 25 * (128 // 8)
    assert after < 0.1 * before
    assert (Path(cfg.output_dir) / "best" / MODEL_FILE).is_file()
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "eval"} <= {r["kind"] for r in rows}
    assert all("lr" in r and "mse" in r for r in rows if r["kind"] == "train")


def test_resume_reproduces_uninterrupted_run(tmp_path):
    data = Synthetic(72)  # 9 micro-batches/epoch, accum 2 -> groups 2,2,2,2,1 (a short last group)
    ref_cfg = make_config(tmp_path, "ref")
    torch.manual_seed(0)
    ref = Regressor()
    Trainer(ref, ref_cfg, data, collate_fn=noisy_collate, eval_fn=eval_fn_for(data)).fit()
    ref_losses = train_losses(Path(ref_cfg.output_dir))
    assert len(ref_losses) == 15

    # Same run, crashed in the middle of epoch 2 (after the step-6 checkpoint) ...
    cfg = make_config(tmp_path, "crash", resume_from="auto")
    torch.manual_seed(0)  # same initial weights as the reference
    crashed = Regressor()
    crashed.fail_at = 16  # micro-batch 16 = inside optimizer step 9 (steps 7, 8 done)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(crashed, cfg, data, collate_fn=noisy_collate, eval_fn=eval_fn_for(data)).fit()
    assert latest_checkpoint(cfg.output_dir).name == "step-00000006"
    # ... then resumed by a fresh process-like setup: new model, new trainer, RNG disturbed.
    torch.manual_seed(12345)
    torch.randn(100)
    resumed = Regressor()
    trainer = Trainer(resumed, cfg, data, collate_fn=noisy_collate, eval_fn=eval_fn_for(data))
    trainer.fit()
    assert trainer.step == 15
    losses = train_losses(Path(cfg.output_dir))  # later rows (the resumed run) win per step
    assert sorted(losses) == sorted(ref_losses)
    for step, loss in ref_losses.items():
        assert loss == pytest.approx(losses[step], rel=1e-6, abs=1e-9), step
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_unknown_config_key_names_it_and_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        TrainerConfig.from_dict({"lr": 1e-3, "learning_rate": 1e-3})
    msg = str(err.value)
    assert "'learning_rate'" in msg and "lr" in msg and "grad_accum_steps" in msg

    path = tmp_path / "cfg.yaml"
    path.write_text("trainer:\n  epochs: 2\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match="batchsize"):
        TrainerConfig.from_file(path, section="trainer")
    path.write_text('{"epochs": 3, "precision": "bf16"}')
    path = path.rename(tmp_path / "cfg.json")
    cfg = TrainerConfig.from_file(path)
    assert cfg.epochs == 3 and cfg.precision == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        TrainerConfig.from_dict({"precision": "fp8"})


def test_fp16_needs_cuda_and_bf16_runs_on_cpu(tmp_path):
    data = Synthetic(32)
    with pytest.raises(ConfigError, match="fp16"):
        Trainer(Regressor(), make_config(tmp_path, "fp16", precision="fp16"), data, collate_fn=noisy_collate)
    cfg = make_config(tmp_path, "bf16", precision="bf16", epochs=1, ema_decay=None)
    summary = Trainer(Regressor(), cfg, data, collate_fn=noisy_collate).fit()
    assert summary["steps"] == 2


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    data = Synthetic(32)
    cfg = make_config(tmp_path, "atomic", epochs=1, save_every_steps=None)
    trainer = Trainer(Regressor(), cfg, data, collate_fn=noisy_collate)
    trainer.fit()
    done = latest_checkpoint(cfg.output_dir)
    assert done is not None and is_complete_checkpoint(done)
    for name in (MODEL_FILE, OPTIM_FILE, STATE_FILE, "rng.pt", "ema.safetensors"):
        assert (done / name).is_file()
    torch.load(done / OPTIM_FILE, weights_only=True)  # loadable in the safe mode
    torch.load(done / "rng.pt", weights_only=True)

    # A crash in the middle of writing leaves only a temp folder that nothing treats as complete.
    trainer.step = 99
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        if str(f).endswith("rng.pt"):
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    monkeypatch.setattr(torch, "save", real_save)
    root = Path(cfg.output_dir) / "checkpoints"
    assert not (root / "step-00000099").exists()
    assert any(".tmp-" in p.name for p in root.iterdir())
    assert latest_checkpoint(cfg.output_dir) == done
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == [done.name]
    tmp_dir = next(p for p in root.iterdir() if ".tmp-" in p.name)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        trainer.load_checkpoint(tmp_dir)


def test_param_groups_skip_decay_on_norms_and_biases():
    model = Regressor()
    cfg = TrainerConfig(weight_decay=0.1, lr=1e-3, lr_scale={"net.0.": 0.5})
    groups = param_groups(model, cfg)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["net.0.weight"]["weight_decay"] == 0.1 and by_name["net.0.weight"]["lr"] == pytest.approx(5e-4)
    assert by_name["net.0.bias"]["weight_decay"] == 0.0
    assert by_name["net.1.weight"]["weight_decay"] == 0.0  # LayerNorm weight
    assert by_name["net.4.weight"]["weight_decay"] == 0.1 and by_name["net.4.weight"]["lr"] == pytest.approx(1e-3)
    model.net[4].weight.requires_grad_(False)
    assert "net.4.weight" not in {n for g in param_groups(model, cfg) for n in g["names"]}


def test_cosine_schedule_with_warmup():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_out_of_memory_says_what_to_lower(tmp_path):
    model = Regressor()
    model.fail_at = 1
    model.fail_with = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    cfg = make_config(tmp_path, "oom", epochs=1)
    with pytest.raises(TrainingOOMError, match="lower batch_size"):
        Trainer(model, cfg, Synthetic(32), collate_fn=noisy_collate).fit()


def test_model_without_compute_loss_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="compute_loss"):
        Trainer(nn.Linear(2, 1), make_config(tmp_path, "x"), Synthetic(32))
    assert not math.isnan(cosine_with_warmup(0, 1, 0))


def test_old_and_public_import_paths_name_the_same_objects():
    """trainer.py is the public entry after the split into config/engine/checkpoints/loop: every
    name it lists resolves, to the object at its new home, and the pre-layout paths still work."""
    import importlib

    from humanaes.training import checkpoints, config, engine, loop, trainer

    for name in trainer.__all__:
        assert getattr(trainer, name) is not None, name
    assert trainer.Trainer is loop.Trainer and trainer.TrainerConfig is config.TrainerConfig
    assert trainer.EMA is engine.EMA and trainer.latest_checkpoint is checkpoints.latest_checkpoint
    assert importlib.import_module("humanaes.trainer") is trainer
    assert importlib.import_module("humanaes.metavoter").fit_metavoter is importlib.import_module(
        "humanaes.training.metavoter").fit_metavoter
    from humanaes.evaluation import EvalReport, evaluate, evaluator  # the one-module spelling still works

    assert (evaluate, EvalReport) == (evaluator.evaluate, evaluator.EvalReport)
