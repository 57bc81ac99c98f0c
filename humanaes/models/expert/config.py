"""Model configuration: one JSON-serialisable dataclass, split from the modeling code.

Presets (presets/*.json) and our own checkpoints (config.json beside model.safetensors) are
instances of this. `vision` and `llm` hold the keyword arguments of transformers'
InternVLVisionConfig and Qwen2Config/LlamaConfig, so nothing of those is re-invented here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humanaes.config_keys import check_keys
from humanaes.errors import ConfigError
from humanaes.fsutil import atomic_write
from humanaes.schema import LEVEL_CENTRES

FORMAT_NAME = "humanaes"
FORMAT_VERSION = 1
#: `HumanAesConfig.tokenizer` of a tokenizer shipped in humanaes (presets/tokenizers/<name>)
PACKAGED_PREFIX = "packaged:"


@dataclass
class HeadsConfig:
    regression: bool = True
    expert: bool = True
    # width of the parent feed-forward nets of the expert head (FFN(n -> h -> 1))
    expert_hidden: int = 16
    expert_activation: str = "gelu"


@dataclass
class MetaVoterConfig:
    # "mlp": 3 -> hidden -> 1 with a sigmoid; "linear": 3 -> 1 with a sigmoid
    kind: str = "mlp"
    hidden: int = 16
    # False until `train-metavoter` fitted it; an unfitted MetaVoter averages the heads.
    fitted: bool = False
    fit_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class HumanAesConfig:
    name: str = "humanaes"
    vision: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    downsample_ratio: float = 0.5
    projector_hidden_act: str = "gelu"
    image_size: int = 448
    max_tiles: int = 12
    min_tiles: int = 1
    use_thumbnail: bool = True
    template: str = "Hermes-2"
    system_message: str | None = None
    # Text between `</img>` and the `\n` of `<image>\n`: "" reproduces InternVL2's chat(); the
    # release was fine-tuned through ms-swift, which most likely wrote "\n" here (reference 4).
    image_block_suffix: str = ""
    # Tokenizer: a folder, or "packaged:<name>" for one shipped in humanaes/presets/tokenizers.
    tokenizer: str | None = None
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    metavoter: MetaVoterConfig = field(default_factory=MetaVoterConfig)
    level_weights: dict[str, float] = field(default_factory=lambda: dict(LEVEL_CENTRES))
    torch_dtype: str = "float32"
    description: str = ""
    score_meaning: str = ""

    # -- derived -----------------------------------------------------------------------
    @property
    def tokens_per_tile(self) -> int:
        patch = int(self.vision.get("patch_size", 14))
        side = self.image_size // patch
        return int(side * side * self.downsample_ratio * self.downsample_ratio)

    @property
    def hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def packaged_tokenizer(self) -> bool:
        """Whether the tokenizer is one shipped in humanaes ("packaged:<name>"), not a checkpoint's own."""
        return self.tokenizer is not None and str(self.tokenizer).startswith(PACKAGED_PREFIX)

    def tokenizer_source(self, folder: str | Path) -> str:
        """Where a checkpoint in `folder` loads its tokenizer from: the packaged one it names,
        else `folder` itself (the tokenizer files live beside the weights)."""
        return str(self.tokenizer) if self.packaged_tokenizer else str(folder)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format"] = FORMAT_NAME
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HumanAesConfig":
        data = dict(data)
        data.pop("format", None)
        data.pop("format_version", None)
        check_keys(cls, data, "model config")
        heads = data.pop("heads", {}) or {}
        metavoter = data.pop("metavoter", {}) or {}
        check_keys(HeadsConfig, heads, "heads")
        check_keys(MetaVoterConfig, metavoter, "metavoter")
        return cls(heads=HeadsConfig(**heads), metavoter=MetaVoterConfig(**metavoter), **data)

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "HumanAesConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc})") from None
        return cls.from_dict(data)


