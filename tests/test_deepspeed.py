"""DeepSpeed ZeRO in humanaes.training.trainer.

Always: config checks, and the error when zero_stage is set without DeepSpeed installed.
With `deepspeed` importable (pip install 'humanaes[deepspeed]'), on CPU with gloo under torchrun:
2 processes x batch 4 with ZeRO-2 follow the loss trajectory of 1 process x batch 8 without
DeepSpeed (with gradient accumulation and a short last group per epoch), resume exactly from an
intermediate checkpoint, and bf16 hands the model back in fp32.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from humanaes.errors import CheckpointError, ConfigError
from humanaes.training.trainer import DEEPSPEED_DIR, MODEL_FILE, OPTIM_FILE, STATE_FILE, Trainer, TrainerConfig

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "deepspeed_worker.py"
sys.path.insert(0, str(TESTS))
from ddp_worker import Net, Points  # noqa: E402
from deepspeed_worker import main as train_in_process  # noqa: E402

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="deepspeed is not installed (DS_BUILD_OPS=0 pip install deepspeed, or 'humanaes[deepspeed]')"
)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu"}  # the worker trains on CPU (gloo), GPU or not
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(tmp: Path, out: Path, batch: int, overrides: dict, procs: int = 1, ok: bool = True) -> subprocess.CompletedProcess:
    launch = [sys.executable] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    proc = subprocess.run([*launch, str(WORKER), str(out), str(batch), json.dumps(overrides)], cwd=tmp, env=_env(),
                          capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(torch.tensor(a[key]), torch.tensor(b[key]), atol=atol), key


# -- without DeepSpeed ---------------------------------------------------------------------------


def test_config_checks():
    assert TrainerConfig.from_dict({"zero_stage": "2"}).zero_stage == 2  # a CLI override may arrive as text
    assert TrainerConfig.from_dict({"zero_stage": 1, "deepspeed_config": {"zero_optimization": {"overlap_comm": True}}})
    with pytest.raises(ConfigError, match="zero_stage must be 1, 2"):
        TrainerConfig.from_dict({"zero_stage": 3})
    with pytest.raises(ConfigError, match="zero_stage is not"):
        TrainerConfig.from_dict({"deepspeed_config": {"zero_optimization": {"overlap_comm": True}}})
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        TrainerConfig.from_dict({"zero_stage": 2, "deepspeed_config": {"gradient_accumulation_steps": 4}})
    with pytest.raises(ConfigError, match="max_grad_norm"):
        TrainerConfig.from_dict({"zero_stage": 2, "deepspeed_config": {"gradient_clipping": 0.5}})


def test_deepspeed_config_is_derived_from_the_trainer_keys():
    from humanaes.training.engine import Engine

    def derived(**kw):
        engine = Engine.__new__(Engine)  # only the config logic: no device, no DeepSpeed import
        engine.config = TrainerConfig(zero_stage=2, **kw)
        engine.precision = engine.config.precision
        return engine.deepspeed_config()

    ds = derived(batch_size=4, grad_accum_steps=3, max_grad_norm=0.5, precision="bf16",
                 deepspeed_config={"zero_optimization": {"overlap_comm": True}})
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert derived(max_grad_norm=None)["gradient_clipping"] == 0.0  # DeepSpeed: 0 = no clipping
    with pytest.raises(ConfigError, match="set only zero_stage"):
        derived(deepspeed_config={"zero_optimization": {"stage": 1}})
    with pytest.raises(ConfigError, match="contradicts precision 'fp32'"):
        derived(deepspeed_config={"fp16": {"enabled": True}})


def test_zero_stage_without_deepspeed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # the engine may set these; restore them afterwards
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = TrainerConfig(output_dir=str(tmp_path), device="cpu", zero_stage=2, progress_bar=False, tensorboard=False)
    with pytest.raises(ConfigError, match="pip install deepspeed"):
        Trainer(Net(), config, Points())


# -- with DeepSpeed (subprocesses: torchrun, gloo) ----------------------------------------------


@needs_deepspeed
def test_zero2_two_processes_match_one_and_resume(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    single, zero, resumed = tmp_path / "single", tmp_path / "zero2", tmp_path / "resumed"
    # 12 micro-batches an epoch in groups of 5, 5, 2: DeepSpeed must follow our accumulation boundaries
    keep = {"grad_accum_steps": 5, "save_every_epochs": 1, "keep_last": 5}
    threads = torch.get_num_threads()
    try:  # 1 process, no DeepSpeed, global batch 8: in this process (no DeepSpeed is imported)
        train_in_process(str(single), 8, {"grad_accum_steps": 5})
    finally:
        torch.set_num_threads(threads)
    _run(tmp_path, zero, 4, {"zero_stage": 2, **keep}, procs=2)  # 2 x 4 under ZeRO-2
    a, b = _result(single), _result(zero)
    assert len(a["losses"]) == len(b["losses"]) == 9  # 3 epochs x 3 optimizer steps
    for x, y in zip(a["losses"], b["losses"]):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x))
    for x, y in zip(a["grad_norms"], b["grad_norms"]):  # pre-clip norms, clipped at 1.0 by DeepSpeed
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x))
    assert a["losses"][-1] < a["losses"][0] * 0.5  # it learned
    _close(a["weights"], b["weights"], atol=1e-5)

    # checkpoint layout: complete, atomic, DeepSpeed's partitions inside ours, nothing temporary left
    ckpt = zero / "checkpoints" / "step-00000003"  # end of epoch 1
    assert (ckpt / MODEL_FILE).is_file() and (ckpt / STATE_FILE).is_file() and not (ckpt / OPTIM_FILE).exists()
    parts = sorted(p.name for p in (ckpt / DEEPSPEED_DIR).iterdir())
    assert sum("optim_states" in name for name in parts) == 2, parts  # one optimizer partition per rank
    assert not [p for p in (zero / "checkpoints").iterdir() if ".tmp-" in p.name]
    state = json.loads((ckpt / STATE_FILE).read_text())
    assert state["zero_stage"] == 2 and state["world_size"] == 2 and state["step"] == 3

    # resume from step 3 (with rank-0 evaluation, a collective `best/` and reloading it after fit)
    _run(tmp_path, resumed, 4, {"zero_stage": 2, **keep, "resume_from": str(ckpt), "eval": True,
                                "metric_for_best": "mse", "greater_is_better": False, "eval_every_steps": 4,
                                "save_every_epochs": 10, "reload_best": True}, procs=2)
    c = _result(resumed)
    assert len(c["losses"]) == 6
    for x, y in zip(b["losses"][3:], c["losses"]):
        assert abs(x - y) <= 1e-6 * max(1.0, abs(x))
    assert (resumed / "best" / DEEPSPEED_DIR).is_dir() and c["best_step"] in (4, 6, 8, 9)
    if c["best_step"] == 9:
        _close(b["weights"], c["weights"], atol=1e-6)

    # a ZeRO checkpoint is refused, with what to do, by a run without DeepSpeed ...
    plain = TrainerConfig(output_dir=str(tmp_path / "plain"), device="cpu", resume_from=str(ckpt),
                          progress_bar=False, tensorboard=False)
    with pytest.raises(CheckpointError, match="zero_stage=2 and 2 processes"):
        Trainer(Net(), plain, Points()).fit()
    # ... and by DeepSpeed with another number of processes (its optimizer partitions would not fit)
    proc = _run(tmp_path, tmp_path / "one", 8, {"zero_stage": 2, "resume_from": str(ckpt)}, ok=False)
    assert proc.returncode != 0 and "launch 2 (now 1)" in proc.stderr


@needs_deepspeed
def test_zero2_bf16_single_process_hands_back_fp32(tmp_path):
    out = tmp_path / "bf16"
    _run(tmp_path, out, 8, {"zero_stage": 2, "precision": "bf16", "epochs": 2, "ema_decay": 0.9, "eval": True,
                            "metric_for_best": "mse", "greater_is_better": False, "reload_best": True})
    r = _result(out)
    assert set(r["dtypes"].values()) == {"torch.float32"}  # DeepSpeed's fp32 masters, not its bf16 copies
    assert all(map(lambda x: x == x, r["losses"])) and r["losses"][-1] < r["losses"][0] * 0.5
    assert (out / "best" / "ema.safetensors").is_file() and r["best_step"] is not None
