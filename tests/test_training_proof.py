"""Proof that training works: a tiny random-init HumanAesExpert learns a synthetic task whose
labels are a known function of the pixels (humanaes.training.synthetic), through the real pipeline:
data files -> QA samples -> LoRA + heads joint loss -> merged export -> MetaVoter stage ->
evaluation on held-out rows."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from humanaes.cli import main
from humanaes.data import load_samples
from humanaes.evaluation.evaluator import evaluate
from humanaes.models.expert.checkpoint import save_humanaes
from humanaes.models.expert.tokenization import load_tokenizer
from humanaes.models.registry import create_model, load, preset_config
from humanaes.schema import DIMENSIONS, score_to_level
from humanaes.training.synthetic import make_dataset


def tiny_synthetic_model(folder):
    config = preset_config(
        "humanaes-tiny", name="synthetic-tiny", image_size=56, max_tiles=1,
        vision={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    )
    return save_humanaes(create_model(config, seed=0), folder, tokenizer=load_tokenizer("packaged:tiny"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("proof")
    data = make_dataset(root / "data", train=600, val=80, test=150, size=56, seed=0)
    init = tiny_synthetic_model(root / "init")
    config = {
        "init": str(init),
        "data": {"train": str(data), "max_tiles": 1, "metavoter_holdout": 0.15, "val_limit": 80},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "trainer": {"output_dir": str(root / "run"), "epochs": 10, "batch_size": 16, "lr": 2e-3, "warmup_ratio": 0.05,
                    "weight_decay": 0.0, "eval_every_epochs": None, "save_every_epochs": 100, "progress_bar": False,
                    "num_threads": 1, "seed": 0},
    }
    (root / "train.json").write_text(json.dumps(config))
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(root / "train.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train-metavoter", "--model", str(root / "run" / "final"), str(root / "run" / "metavoter_holdout.jsonl"),
                                  "--out", str(root / "voted"), "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def test_heads_learn_the_pixels(trained):
    scorer = load(trained / "voted", device="cpu", dtype="float32")
    assert scorer.model.metavoter.fitted
    samples = load_samples(trained / "data", "test")
    report = evaluate(scorer, samples, mode="metavoter", batch_size=16)
    assert report.n_scored == len(samples)
    plcc = {head: metrics["plcc"] for head, metrics in report.heads.items()}
    # The LM head's own answer: the most probable level word.
    results = scorer.score([str(s.image) for s in samples], mode="fast", batch_size=16)
    truth = [score_to_level(s.score) for s in samples]
    lm_accuracy = sum(max(r.level_probs, key=r.level_probs.get) == t for r, t in zip(results, truth)) / len(truth)
    majority = max(truth.count(level) for level in set(truth)) / len(truth)
    summary = {**plcc, "lm_level_accuracy": lm_accuracy, "majority_class": majority}
    print("proof metrics:", summary)
    assert plcc["regression_score"] >= 0.9, summary
    assert plcc["expert_overall"] >= 0.9, summary
    assert lm_accuracy >= max(0.4, majority + 0.1), summary
    best_head = max(plcc["lm_score"], plcc["regression_score"], plcc["expert_overall"])
    assert plcc["metavoter_score"] >= best_head - 0.01, summary
    # every dimension of the expert head, on the 12-dimension rows
    for name in DIMENSIONS:
        assert report.per_dimension[name]["plcc"] >= 0.8, (name, report.per_dimension[name])
