"""Fine-tuning HumanAesExpert on human-image labels (reference sections 4, 6, 7).

Stage 1 (`humanaes train CONFIG`): one joint fine-tune. Each row becomes a QA sample (a random
question of the right kind, the exact answer text), the LLM and `mlp1` get LoRA adapters (PEFT),
the regression and expert heads are trained fully, the vision encoder stays frozen (optionally
LoRA too). Loss = CE on the answer tokens + MSE(regression) on overall-only rows + MSE(expert) on
12-dimension rows, every head reading the hidden state of the last prompt token.

Stage 2 (`humanaes train-metavoter`): fit the MetaVoter on the frozen heads' scores of a held-out
part of the training rows (see humanaes.training.metavoter).

The generic loop (optimizer, schedule, accumulation, checkpoints, resume, logging, DDP) is
humanaes.training.trainer; this module supplies the data, the model wrapper and its loss.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from humanaes.config_keys import check_keys
from humanaes.errors import CheckpointError, ConfigError, DataError, ImageLoadError
from humanaes.fsutil import atomic_write
from humanaes.hints import import_optional
from humanaes.io.images import load_image
from humanaes.models.expert.batching import positions_from_mask
from humanaes.models.expert.config import HumanAesConfig
from humanaes.models.expert.modeling import HumanAesExpertModel
from humanaes.models.expert.processing import preprocess_image
from humanaes.models.expert.prompts import PromptTokenizer, expert_answer, get_template, overall_answer, random_question
from humanaes.models.heads import ExpertHead, RegressionHead
from humanaes.schema import NUM_DIMENSIONS

IGNORE_INDEX = -100

# LoRA targets as module-name patterns (full match), reference section 7: every linear layer of
# the LLM and of `mlp1`; optionally the vision tower. Never the vocabulary head or our heads.
LLM_TARGETS = r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
PROJECTOR_TARGETS = r"projector\.linear_[12]"
VISION_TARGETS = r"vision_model\.encoder\.layer\.\d+\.(attention\.(q|k|v)_proj|attention\.projection_layer|mlp\.fc[12])"


# -- configuration ----------------------------------------------------------------------------

@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    llm: bool = True
    projector: bool = True
    vision: bool = False


@dataclass
class LossWeights:
    ce: float = 1.0
    regression: float = 1.0
    expert: float = 1.0


@dataclass
class DataSettings:
    train: str = ""  # a HumanBeauty root or a label .jsonl
    train_split: str = "train"
    val: str | None = None  # defaults to `train` (its val split) when that is a root
    val_split: str = "val"
    val_limit: int | None = None  # validate on at most this many rows
    max_tiles: int = 12
    max_length: int = 4096
    # Fraction of the training rows kept out of stage 1 for fitting the MetaVoter (stage 2).
    metavoter_holdout: float = 0.0
    # Fraction of the training rows kept out for validation when there is no val split
    # (no `<train>/val_label.jsonl` and no data.val); 0 = no validation then.
    val_holdout: float = 0.0


@dataclass
class FinetuneConfig:
    init: str = ""  # preset name, model folder (official or ours) or hub id
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    loss: LossWeights = field(default_factory=LossWeights)
    gradient_checkpointing: bool = False
    load_dtype: str = "float32"  # dtype of the frozen weights (bfloat16 halves their memory)
    trainer: dict[str, Any] = field(default_factory=dict)  # humanaes.training.trainer.TrainerConfig keys

    SECTIONS = {"data": DataSettings, "lora": LoraSettings, "loss": LossWeights}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneConfig":
        from humanaes.training.trainer import TrainerConfig

        check_keys(cls, data, "training config")
        values = dict(data)
        for name, klass in cls.SECTIONS.items():
            section = values.get(name) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"config section {name!r} must be a mapping")
            check_keys(klass, section, f"{name}")
            values[name] = klass(**section)
        config = cls(**values)
        TrainerConfig.from_dict(config.trainer)  # validate its keys now, with their own message
        if not config.init:
            raise ConfigError("the training config needs `init`: a preset name, a model folder or a hub id")
        if not config.data.train:
            raise ConfigError("the training config needs `data.train`: a HumanBeauty folder or a label .jsonl file")
        return config

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> "FinetuneConfig":
        from humanaes.training.trainer import load_config_file

        data = load_config_file(path)
        for item in overrides or []:
            apply_override(data, item)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_override(data: dict[str, Any], item: str) -> None:
    """`section.key=value` (value parsed as YAML, so numbers and booleans keep their types)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.lr=5e-5)")
    key, raw = item.split("=", 1)
    try:
        import yaml

        value = yaml.safe_load(raw)
    except Exception:  # noqa: BLE001 - fall back to the raw string
        value = raw
    if isinstance(value, str):
        value = _number_or_text(value)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _number_or_text(text: str) -> Any:
    # YAML 1.1 reads "5e-5" as a string; users mean a number.
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# -- data ----------------------------------------------------------------------------------

class QADataset(Dataset):
    """Rows -> QA samples: tiles, prompt + answer ids, labels, the pooling index and targets."""

    def __init__(self, samples: list[Any], prompts: PromptTokenizer, config: HumanAesConfig, *,
                 max_tiles: int, max_length: int, seed: int = 42):
        self.samples = samples
        self.prompts = prompts
        self.config = config
        self.max_tiles = max_tiles
        self.max_length = max_length
        self.seed = seed
        missing = [s.image for s in samples if not Path(s.image).exists()]
        if missing:
            raise DataError(f"{len(missing)} training image(s) not found, e.g. {missing[0]}; run `humanaes data validate`")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        # The question depends only on (seed, index): reproducible, and the same after a resume.
        rng = random.Random(self.seed * 1_000_003 + index)
        expert = bool(sample.is_expert)
        question = random_question(rng, expert)
        answer = expert_answer(sample.scores) if expert else overall_answer(float(sample.score))
        try:
            image = load_image(sample.image)
        except ImageLoadError as exc:
            raise DataError(f"training image unreadable: {exc}") from None
        tiles = preprocess_image(image, max_tiles=self.max_tiles, min_tiles=self.config.min_tiles,
                                 tile_size=self.config.image_size, use_thumbnail=self.config.use_thumbnail)
        prompt, pool = self.prompts.prompt(question).expand(tiles.shape[0] * self.config.tokens_per_tile,
                                                            self.prompts.img_context_id)
        answer_ids = self.prompts.answer_ids(answer)
        ids = prompt + answer_ids
        if len(ids) > self.max_length:
            raise DataError(f"{sample.image}: {len(ids)} tokens exceed max_length {self.max_length}; lower data.max_tiles")
        scores = list(sample.scores) if expert else [0.0] * NUM_DIMENSIONS
        return {
            "pixel_values": tiles,
            "input_ids": ids,
            "labels": [IGNORE_INDEX] * len(prompt) + answer_ids,
            "pool_index": pool,
            "is_expert": expert,
            "overall": float(sample.score),
            "scores": scores,
        }


def make_collate(pad_id: int):
    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):  # right padding: training reads fixed indices
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            labels[i, :n] = torch.tensor(x["labels"])
            mask[i, :n] = 1
        return {
            "pixel_values": torch.cat([x["pixel_values"] for x in items]),
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "pool_index": torch.tensor([x["pool_index"] for x in items]),
            "is_expert": torch.tensor([x["is_expert"] for x in items]),
            "overall": torch.tensor([x["overall"] for x in items], dtype=torch.float32),
            "scores": torch.tensor([x["scores"] for x in items], dtype=torch.float32),
        }

    return collate


# -- the model being trained --------------------------------------------------------------

class FinetuneModule(nn.Module):
    """HumanAesExpertModel + LoRA adapters, with the joint loss. Its state_dict holds only the
    trainable tensors (adapters and heads): checkpoints stay small, and the frozen weights come
    from `init` again on resume."""

    def __init__(self, model: HumanAesExpertModel, lora: LoraSettings, loss: LossWeights, gradient_checkpointing: bool = False):
        super().__init__()
        self.lora = lora
        self.weights = loss
        for p in model.parameters():
            p.requires_grad_(False)
        targets = [t for t, on in ((LLM_TARGETS, lora.llm), (PROJECTOR_TARGETS, lora.projector), (VISION_TARGETS, lora.vision)) if on]
        if lora.r > 0 and targets:
            peft = import_optional("peft", "LoRA fine-tuning (lora.r > 0)")
            LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model

            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                                target_modules="^(" + "|".join(targets) + ")$")
            inject_adapter_in_model(config, model)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
        for head in (model.regression_head, model.expert_head):
            if head is not None:
                head.float().requires_grad_(True)
        if gradient_checkpointing:
            model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if lora.vision:
                model.vision_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self.img_context_id: int | None = None  # set by the builder (from the tokenizer)

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        full = super().state_dict(*args, **kwargs)
        keep = set(self.trainable_names())
        return {k: v for k, v in full.items() if k in keep}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):  # type: ignore[override]
        own = dict(self.named_parameters())
        expected = set(self.trainable_names())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        wrong = [k for k in expected & set(state) if tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise CheckpointError(
                "this checkpoint was trained with another model or LoRA setting "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {wrong[:3]}); "
                "resume only with the config that produced it"
            )
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)
        return nn.modules.module._IncompatibleKeys([], [])

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = self.model
        if self.lora.vision:
            features = model.extract_image_features(batch["pixel_values"])
        else:
            with torch.no_grad():  # frozen vision encoder: no activations kept for backward
                features = model.extract_image_features(batch["pixel_values"])
        mask = batch["attention_mask"]
        embeds = model.embed(batch["input_ids"], features, self.img_context_id)
        hidden = model.run_llm(embeds, attention_mask=mask, position_ids=positions_from_mask(mask)).hidden_states

        # Next-token CE on answer tokens only: logits just where they are needed.
        targets = batch["labels"][:, 1:]
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        logits = model.lm_logits(hidden[:, :-1][rows, cols])
        ce = F.cross_entropy(logits.float(), targets[rows, cols])

        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch["pool_index"]].float()
        expert_rows = batch["is_expert"].float()
        zero = pooled.sum() * 0.0
        # Masked means keep every head in the graph on every batch (DDP needs all grads).
        regression_loss, expert_loss = zero, zero
        if model.regression_head is not None:
            err = (model.regression(pooled) - batch["overall"]) ** 2
            regression_loss = (err * (1 - expert_rows)).sum() / (1 - expert_rows).sum().clamp(min=1)
        if model.expert_head is not None:
            err = ((model.expert(pooled) - batch["scores"]) ** 2).mean(-1)
            expert_loss = (err * expert_rows).sum() / expert_rows.sum().clamp(min=1)
        w = self.weights
        loss = w.ce * ce + w.regression * regression_loss + w.expert * expert_loss
        return {"loss": loss, "ce": ce.detach(), "regression_mse": regression_loss.detach(), "expert_mse": expert_loss.detach()}

    @torch.no_grad()
    def merge(self) -> HumanAesExpertModel:
        """Fold the LoRA adapters into the weights (in place) and return the plain model."""
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # no adapters were ever injected
            return self.model
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, LoraLayer):
                    child.merge()
                    setattr(parent, name, child.get_base_layer())
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model


# -- building ---------------------------------------------------------------------------

def prepare_model(init: str, load_dtype: str = "float32", new_heads: bool = True, seed: int = 42) -> tuple[HumanAesExpertModel, Any]:
    """The starting model: an official checkpoint, a plain InternVL2 base (heads created fresh,
    seeded), our own checkpoint or a preset."""
    from humanaes.models.registry import load_model

    model, tokenizer = load_model(init, dtype=load_dtype)
    if new_heads:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            if model.regression_head is None:
                model.regression_head = RegressionHead(model.config.hidden_size)
                model.config.heads.regression = True
            if model.expert_head is None:
                heads = model.config.heads
                model.expert_head = ExpertHead(model.config.hidden_size, heads.expert_hidden, heads.expert_activation)
                heads.expert = True
        finally:
            torch.random.set_rng_state(generator_state)
    return model, tokenizer


def split_holdout(samples: list[Any], ratio: float, seed: int, what: str = "data.metavoter_holdout") -> tuple[list[Any], list[Any]]:
    """Keep `ratio` of the rows out of stage 1 for the MetaVoter (seeded, per source)."""
    if ratio <= 0:
        return samples, []
    if not 0 < ratio < 1:
        raise ConfigError(f"{what} must be in [0, 1), got {ratio}")
    rng = random.Random(seed)
    by_source: dict[str, list[Any]] = {}
    for s in samples:
        by_source.setdefault(getattr(s, "source", "") or "", []).append(s)
    train, held = [], []
    for source in sorted(by_source):
        rows = sorted(by_source[source], key=lambda s: str(s.image))
        rng.shuffle(rows)
        k = int(round(len(rows) * ratio))
        held += rows[:k]
        train += rows[k:]
    return train, held


def make_eval_fn(module: FinetuneModule, tokenizer: Any, samples: list[Any], batch_size: int, max_tiles: int):
    """Validation during training: each head's PLCC/SRCC/RMSE on the validation rows."""
    from humanaes.evaluation.metrics import compute_metrics
    from humanaes.models.expert.scorer import HumanAesScorer

    sources = [str(s.image) for s in samples]
    truth = [float(s.score) for s in samples]

    def evaluate(_: nn.Module) -> dict[str, float]:
        scorer = HumanAesScorer(module.model, tokenizer)
        mode = "metavoter" if "metavoter" in scorer.supported_modes else "fast"
        results = scorer.score(sources, mode=mode, batch_size=batch_size, max_tiles=max_tiles)
        out: dict[str, float] = {}
        heads = {"lm": lambda r: r.lm_score, "regression": lambda r: r.regression_score,
                 "expert": lambda r: r.expert["Comprehensive Aesthetic Score"] if r.expert else None}
        for head, get in heads.items():
            pairs = [(get(r), t) for r, t in zip(results, truth) if r.error is None and get(r) is not None]
            if len(pairs) >= 2:
                m = compute_metrics([p for p, _ in pairs], [t for _, t in pairs])
                out.update({f"val_{head}_plcc": m["plcc"], f"val_{head}_srcc": m["srcc"], f"val_{head}_rmse": m["rmse"]})
        if "val_regression_srcc" in out:
            out["val_srcc"] = out["val_regression_srcc"]
        return out

    return evaluate


def run_training(config: FinetuneConfig, *, resume: str | None = None) -> dict[str, Any]:
    """Stage 1 end to end: data, model, LoRA, trainer, export of the merged model."""
    from humanaes.data import load_samples
    from humanaes.models.expert.checkpoint import save_humanaes
    from humanaes.training.trainer import BEST_DIR, MODEL_FILE, Trainer, TrainerConfig

    tconfig = TrainerConfig.from_dict({**config.trainer, **({"resume_from": resume} if resume else {})})
    out_dir = Path(tconfig.output_dir)
    samples = load_samples(config.data.train, config.data.train_split)
    train_rows, holdout = split_holdout(samples, config.data.metavoter_holdout, tconfig.seed)
    val_rows: list[Any] = []
    val_source = config.data.val or (config.data.train if Path(config.data.train).is_dir() else None)
    if val_source:
        try:
            val_rows = load_samples(val_source, config.data.val_split)
        except DataError:
            if config.data.val:
                raise
    if not val_rows and config.data.val_holdout:
        # No val split: keep a seeded share of the training rows out instead (after the
        # MetaVoter's share, so both stay disjoint from what stage 1 trains on).
        train_rows, val_rows = split_holdout(train_rows, config.data.val_holdout, tconfig.seed + 1, "data.val_holdout")
    if config.data.val_limit:
        val_rows = val_rows[: config.data.val_limit]

    model, tokenizer = prepare_model(config.init, config.load_dtype, seed=tconfig.seed)
    prompts = PromptTokenizer(tokenizer, get_template(model.config.template), model.config.system_message,
                              model.config.image_block_suffix)
    dataset = QADataset(train_rows, prompts, model.config, max_tiles=config.data.max_tiles,
                        max_length=config.data.max_length, seed=tconfig.seed)
    torch.manual_seed(tconfig.seed)  # LoRA initialisation draws from the global generator
    module = FinetuneModule(model, config.lora, config.loss, config.gradient_checkpointing)
    module.img_context_id = prompts.img_context_id
    eval_fn = make_eval_fn(module, tokenizer, val_rows, tconfig.batch_size, config.data.max_tiles) if val_rows else None
    if eval_fn is None and tconfig.metric_for_best:
        where = f"no {config.data.val_split}_label.jsonl in {config.data.train}" if Path(config.data.train).is_dir() else "no data.val"
        raise ConfigError(
            f"trainer.metric_for_best is set but there is no validation data ({where}); set data.val_holdout=0.05 "
            "to keep 5% of the training rows for validation, point data.val at a label file, "
            "or set trainer.metric_for_best=null"
        )
    trainer = Trainer(module, tconfig, dataset, collate_fn=make_collate(prompts.pad_id), eval_fn=eval_fn)
    if trainer.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "finetune_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        if holdout:
            _write_rows(out_dir / "metavoter_holdout.jsonl", holdout)
    summary = trainer.fit()
    if trainer.is_main_process:
        best = out_dir / BEST_DIR
        if tconfig.metric_for_best and (best / MODEL_FILE).exists():
            trainer.load_checkpoint(best)
        final = save_humanaes(module.merge(), out_dir / "final", tokenizer=tokenizer)
        summary["final"] = str(final)
    return summary


def _write_rows(path: Path, samples: list[Any]) -> None:
    rows = ({"image_name": str(Path(s.image).resolve()), "source": s.source, "is_expert": bool(s.is_expert),
             "score": list(s.scores) if s.is_expert else float(s.score)} for s in samples)
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def export_checkpoint(config: FinetuneConfig, checkpoint: str | Path, out: str | Path) -> Path:
    """Merge a stage-1 checkpoint's adapters into the `init` weights and save in our format."""
    from humanaes.models.expert.checkpoint import save_humanaes
    from humanaes.training.checkpoints import MODEL_FILE, load_weights

    checkpoint = Path(checkpoint)
    if not (checkpoint / MODEL_FILE).exists():
        raise CheckpointError(f"{checkpoint} is not a training checkpoint (no {MODEL_FILE})")
    model, tokenizer = prepare_model(config.init, config.load_dtype)
    module = FinetuneModule(model, config.lora, config.loss)
    module.load_state_dict(load_weights(checkpoint / MODEL_FILE))
    return save_humanaes(module.merge(), out, tokenizer=tokenizer)


__all__ = [
    "FinetuneConfig", "FinetuneModule", "LoraSettings", "LossWeights", "DataSettings", "QADataset",
    "make_collate", "prepare_model", "run_training", "export_checkpoint", "apply_override", "split_holdout",
]
