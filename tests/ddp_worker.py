"""Worker for tests/test_distributed.py: trains a small regression net with the project's trainer.

Run directly (one process) or under torchrun (several); writes the logged loss trajectory and
the final weights of rank 0 to OUT/result.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from humanaes.training.trainer import Trainer, TrainerConfig


class Points(Dataset):
    def __init__(self, n: int = 96):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x @ torch.linspace(-1, 1, 6) + 0.1 * torch.randn(n, generator=g)).unsqueeze(-1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"x": self.x[i], "y": self.y[i]}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def compute_loss(self, batch):
        loss = ((self.body(batch["x"]) - batch["y"]) ** 2).mean()  # per-sample mean
        return {"loss": loss}


def main(out: str, batch_size: int) -> None:
    torch.set_num_threads(1)
    config = TrainerConfig(output_dir=out, epochs=3, batch_size=batch_size, lr=0.05, warmup_steps=2,
                           log_every_steps=1, progress_bar=False, tensorboard=False, save_every_epochs=10,
                           device="cpu", seed=3)
    trainer = Trainer(Net(), config, Points())
    trainer.fit()
    if trainer.is_main_process:
        losses = [row["loss"] for row in trainer.history if row.get("kind") == "train"]
        weights = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
        Path(out, "result.json").write_text(json.dumps({"losses": losses, "weights": weights}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
