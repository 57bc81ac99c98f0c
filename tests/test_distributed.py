"""DDP under torchrun (gloo, CPU): 2 processes x batch 4 follow the same loss trajectory as
1 process x batch 8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(args: list[str], tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_two_processes_match_one(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    single, double = tmp_path / "single", tmp_path / "double"
    _run([sys.executable, str(WORKER), str(single), "8"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(double), "4"], tmp_path)
    a = json.loads((single / "result.json").read_text())
    b = json.loads((double / "result.json").read_text())
    assert len(a["losses"]) == len(b["losses"]) == 36  # 3 epochs x 96 / 8
    for x, y in zip(a["losses"], b["losses"]):
        assert abs(x - y) <= 1e-5 * max(1.0, abs(x))
    assert a["losses"][-1] < a["losses"][0] * 0.5  # it learned
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.allclose(torch.tensor(a["weights"][key]), torch.tensor(b["weights"][key]), atol=1e-5), key
