"""Fine-tuning pieces: config errors, QA samples, LoRA placement, merge equivalence, resume guard."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from humanaes.data import Sample
from humanaes.errors import CheckpointError, ConfigError
from humanaes.models.expert.checkpoint import save_humanaes
from humanaes.models.expert.prompts import EXPERT_QUESTIONS, GENERAL_QUESTIONS, PromptTokenizer, get_template
from humanaes.models.expert.tokenization import load_tokenizer
from humanaes.models.registry import create_model, preset_config
from humanaes.training.finetune import (
    IGNORE_INDEX,
    FinetuneConfig,
    FinetuneModule,
    LoraSettings,
    LossWeights,
    QADataset,
    apply_override,
    make_collate,
    prepare_model,
    split_holdout,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    config = preset_config("humanaes-tiny", image_size=56, max_tiles=2)
    return save_humanaes(create_model(config, seed=1), folder / "init", tokenizer=load_tokenizer("packaged:tiny"))


@pytest.fixture()
def rows(tmp_path):
    Image.new("RGB", (80, 60), (10, 200, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (60, 80), (250, 20, 30)).save(tmp_path / "b.png")
    scores = tuple(i / 12 for i in range(12))
    return [
        Sample(image=tmp_path / "a.png", image_name="a.png", source="s", score=0.73),
        Sample(image=tmp_path / "b.png", image_name="b.png", source="s", score=scores[11], scores=scores, is_expert=True),
    ]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown training config key 'epochs'.*valid keys: .*trainer"):
        FinetuneConfig.from_dict({"init": "humanaes-tiny", "data": {"train": "x"}, "epochs": 3})
    with pytest.raises(ConfigError, match="unknown lora key 'rank'; valid keys: alpha, dropout, llm, projector, r, vision"):
        FinetuneConfig.from_dict({"init": "humanaes-tiny", "data": {"train": "x"}, "lora": {"rank": 4}})
    with pytest.raises(ConfigError, match="unknown trainer config key 'learning_rate'"):
        FinetuneConfig.from_dict({"init": "humanaes-tiny", "data": {"train": "x"}, "trainer": {"learning_rate": 1}})
    path = tmp_path / "c.yaml"
    path.write_text("init: humanaes-tiny\ndata:\n  train: x\n")
    config = FinetuneConfig.from_file(path, ["trainer.lr=5e-5", "lora.r=4", "data.max_tiles=6"])
    assert config.trainer["lr"] == 5e-5 and config.lora.r == 4 and config.data.max_tiles == 6
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "trainer.lr")


def test_qa_samples_are_exact(tiny, rows):
    model, tokenizer = prepare_model(str(tiny))
    prompts = PromptTokenizer(tokenizer, get_template(model.config.template))
    dataset = QADataset(rows, prompts, model.config, max_tiles=2, max_length=4096, seed=3)
    overall, expert = dataset[0], dataset[1]
    for item, questions, answer in (
        (overall, GENERAL_QUESTIONS, "The aesthetics of the human image is good"),
        (expert, EXPERT_QUESTIONS, "12. Comprehensive Aesthetic Score : excellent"),
    ):
        text = tokenizer.decode(item["input_ids"])
        assert any(q in text for q in questions)
        answer_ids = [t for t, label in zip(item["input_ids"], item["labels"]) if label != IGNORE_INDEX]
        decoded = tokenizer.decode(answer_ids)
        assert decoded.endswith("<|im_end|>") and answer in decoded
        first_label = next(i for i, label in enumerate(item["labels"]) if label != IGNORE_INDEX)
        assert item["pool_index"] == first_label - 1  # the last prompt token
        assert tokenizer.decode(item["input_ids"][item["pool_index"]]) == "\n"  # after `assistant`
    assert "1. Facial Brightness : bad" in tokenizer.decode(expert["input_ids"])
    assert dataset[0]["input_ids"] == overall["input_ids"]  # reproducible question choice
    batch = make_collate(prompts.pad_id)([overall, expert])
    assert batch["pixel_values"].shape[0] == overall["pixel_values"].shape[0] + expert["pixel_values"].shape[0]
    assert batch["is_expert"].tolist() == [False, True] and batch["scores"].shape == (2, 12)


def test_lora_targets_heads_trainable_and_merge_is_exact(tiny, rows):
    model, tokenizer = prepare_model(str(tiny))
    prompts = PromptTokenizer(tokenizer, get_template(model.config.template))
    module = FinetuneModule(model, LoraSettings(r=4, alpha=8, dropout=0.0), LossWeights())
    module.img_context_id = prompts.img_context_id
    names = module.trainable_names()
    assert any(".self_attn.q_proj.lora_A" in n for n in names) and any(".mlp.down_proj.lora_B" in n for n in names)
    assert any("projector.linear_1.lora_A" in n for n in names)
    assert not any(n.startswith("model.vision_model") for n in names)  # frozen vision tower
    assert not any("lm_head" in n or "embed_tokens" in n for n in names)
    assert any(n.startswith("model.regression_head") for n in names) and any(n.startswith("model.expert_head") for n in names)
    assert not any(n.startswith("model.metavoter") for n in names)
    assert set(module.state_dict()) == set(names)
    # make the adapters non-trivial, then check merged == adapted
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batch = make_collate(prompts.pad_id)([QADataset(rows, prompts, model.config, max_tiles=2, max_length=4096)[i] for i in range(2)])
    module.eval()
    before = module.compute_loss(batch)
    merged = module.merge()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    plain = FinetuneModule.__new__(FinetuneModule)
    torch.nn.Module.__init__(plain)
    plain.model, plain.lora, plain.weights, plain.img_context_id = merged, LoraSettings(r=0), LossWeights(), prompts.img_context_id
    after = plain.compute_loss(batch)
    for key in ("ce", "regression_mse", "expert_mse"):
        assert float(after[key]) == pytest.approx(float(before[key]), rel=1e-4, abs=1e-6)


def test_resume_from_another_model_is_refused(tiny):
    model, _ = prepare_model(str(tiny))
    module = FinetuneModule(model, LoraSettings(r=4), LossWeights())
    state = module.state_dict()
    other, _ = prepare_model(str(tiny))
    with pytest.raises(CheckpointError, match="another model or LoRA setting"):
        FinetuneModule(other, LoraSettings(r=8), LossWeights()).load_state_dict(state)


def test_plain_base_gets_fresh_seeded_heads(fixtures_dir):
    a, _ = prepare_model(str(fixtures_dir / "tiny_qwen2"), seed=5)
    b, _ = prepare_model(str(fixtures_dir / "tiny_qwen2"), seed=5)
    assert a.regression_head is not None and a.expert_head is not None
    assert torch.equal(a.regression_head.linear.weight, b.regression_head.linear.weight)


def test_holdout_split_is_seeded_and_disjoint(rows):
    many = [Sample(image=rows[0].image.with_name(f"{i}.png"), image_name=f"{i}", source="a" if i % 2 else "b", score=0.5)
            for i in range(40)]
    train, held = split_holdout(many, 0.25, seed=1)
    again = split_holdout(many, 0.25, seed=1)[1]
    assert len(held) == 10 and {s.image_name for s in held} == {s.image_name for s in again}
    assert not {s.image_name for s in held} & {s.image_name for s in train}
    assert sum(s.source == "a" for s in held) == 5  # per source
