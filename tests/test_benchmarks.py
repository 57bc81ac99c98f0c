"""benchmarks/: the quick CPU suite end to end on humanaes-tiny, the GPU suite's guard and dry
run, the original-layout writer and the reference flow's preprocessing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import reference  # noqa: E402
from benchmarks.original_layout import save_original  # noqa: E402
from benchmarks.run import main  # noqa: E402

SUMMARY_KEYS = ("metavoter_over_fast", "preprocess_images_per_s", "load_seconds", "fast_seconds_per_image")


def test_quick_cpu_suite(tmp_path):
    out = tmp_path / "quick.json"
    assert main(["--suite", "cpu", "--quick", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    data = json.loads(out.read_text())
    for key in SUMMARY_KEYS:
        assert isinstance(data[key]["humanaes"], float) and data[key]["humanaes"] > 0, key
        assert isinstance(data[key]["reference"], float) and data[key]["reference"] > 0, key
    # humanaes and the reference flow gave the same scores before anything was timed
    fp32 = {k: v for k, v in data["parity"].items() if k.endswith("fp32")}
    assert fp32 and max(fp32.values()) <= 2e-4
    assert any("@6" in k for k in fp32)  # multi-tile parity too
    assert data["preprocess"]["typical"]["max_abs_diff"] == 0.0
    assert data["machine"]["nproc"] >= 1 and data["machine"]["torch"]
    assert "| measure |" in data["table_markdown"]
    assert set(data["batched_throughput"]["by_batch_size"]) == {"1", "2", "4"}
    assert data["vision_chunking_ab"]["before_one_chunk"]["median"] > 0
    assert torch.get_num_threads() == 2  # the suite restores the caller's thread count (conftest: 2)


def test_gpu_suite_guard_and_cpu_dry_run(tmp_path, capsys):
    if not torch.cuda.is_available():
        assert main(["--suite", "gpu"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
    out = tmp_path / "gpu.json"
    assert main(["--suite", "gpu", "--device", "cpu", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    data = json.loads(out.read_text())
    block = data["models"]["humanaes-tiny"]
    assert block["parity"]["ok"]
    sides = {(r["side"], r["mode"], r["max_tiles"]) for r in block["rows"] if "median_s" in r}
    assert ("humanaes", "metavoter", 12) in sides and ("reference", "fast", 6) in sides
    assert data["fast_seconds_per_image"]["humanaes"] > 0


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_original_layout_round_trip(tmp_path, llm):
    from humanaes.models.expert.checkpoint import load_original
    from humanaes.models.registry import create_model, preset_config

    config = preset_config("humanaes-tiny")
    if llm == "llama":  # 8B-style: InternLM2 layout with fused, interleaved wqkv
        config.llm.update(model_type="llama", attention_bias=False, mlp_bias=False)
        config.template = "internlm2-chat"
    model = create_model(config, seed=3)
    folder = save_original(model, tmp_path / "orig", dtype=torch.float32)
    keys = json.loads((folder / "config.json").read_text())
    assert keys["model_type"] == "internvl_chat"
    loaded, _ = load_original(folder, dtype=torch.float32)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("metavoter."))


def test_reference_preprocessing_matches_official_fixtures(fixtures_dir):
    from safetensors.torch import load_file

    pre = fixtures_dir / "preprocess"
    expected = load_file(pre / "pixel_values.safetensors")
    for key, tensor in expected.items():
        name, max_part = key.rsplit(".", 1)
        image = next(pre.glob(name + ".*"))
        got = reference.load_image(image, max_num=int(max_part.removeprefix("max")))
        assert torch.equal(got, tensor), key
