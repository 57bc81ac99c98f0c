"""Worker for tests/test_deepspeed.py: the regression net of tests/ddp_worker.py, trained by the
project's trainer with extra TrainerConfig keys (e.g. zero_stage, resume_from) given as JSON.

    python deepspeed_worker.py OUT BATCH_SIZE '{"zero_stage": 2}'
    python -m torch.distributed.run --standalone --nproc_per_node=2 deepspeed_worker.py OUT 4 '{...}'

Rank 0 writes the logged loss trajectory, the final weights (after fit, i.e. as the trainer hands
the model back) and their dtypes to OUT/result.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_worker import Net, Points  # noqa: E402

from humanaes.training.trainer import Trainer, TrainerConfig  # noqa: E402


def _no_shm_comm() -> None:
    # On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op on first use (minutes on a
    # small machine). Its gloo fallback computes the same sums: use it in tests.
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        try:
            import deepspeed.ops
        except ImportError:
            return
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main(out: str, batch_size: int, overrides: dict) -> None:
    torch.set_num_threads(1)
    _no_shm_comm()
    values = dict(output_dir=out, epochs=3, batch_size=batch_size, lr=0.05, warmup_steps=2, log_every_steps=1,
                  progress_bar=False, tensorboard=False, save_every_epochs=10, device="cpu", seed=3)
    values.update(overrides)
    evaluate = values.pop("eval", False)
    reload_best = values.pop("reload_best", False)  # as finetune.run_training does after fit, on rank 0

    def eval_fn(model):  # held-out MSE, to exercise rank-0 evaluation and `best/`
        data = Points(32)
        with torch.no_grad():
            return {"mse": float(model.compute_loss({"x": data.x + 0.5, "y": data.y})["loss"])}

    trainer = Trainer(Net(), TrainerConfig(**values), Points(), eval_fn=eval_fn if evaluate else None)
    trainer.fit()
    if trainer.is_main_process:
        if reload_best:
            trainer.load_checkpoint(Path(out, "best"))
        losses = [row["loss"] for row in trainer.history if row.get("kind") == "train"]
        evals = [row["eval/mse"] for row in trainer.history if row.get("kind") == "eval"]
        state = trainer.model.state_dict()
        Path(out, "result.json").write_text(json.dumps({
            "losses": losses,
            "evals": evals,
            "grad_norms": [row.get("grad_norm") for row in trainer.history if row.get("kind") == "train"],
            "weights": {k: v.float().tolist() for k, v in state.items()},
            "dtypes": {k: str(v.dtype) for k, v in state.items()},
            "best_step": trainer.best_step,
        }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
