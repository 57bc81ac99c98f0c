"""HumanAesExpert from transformers' native parts plus our heads (reference section 2).

vision_model    transformers' InternVLVisionModel (InternViT: fused qkv split, layer scales)
projector       `mlp1`: LayerNorm -> Linear -> GELU -> Linear over pixel-shuffled features
language_model  Qwen2ForCausalLM (1B) or LlamaForCausalLM (8B, converted from InternLM2)
regression_head, expert_head, metavoter   ours (humanaes.models.heads)

The model exposes the pieces (image features, embedding splice, LLM pass, heads) instead of one
monolithic forward, because scoring reuses a cached prompt prefix and training needs the hidden
state at the pooling position.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.activations import ACT2FN
from transformers.models.internvl import InternVLVisionConfig, InternVLVisionModel

from humanaes.errors import ConfigError
from humanaes.models.expert.config import HumanAesConfig
from humanaes.models.heads import ExpertHead, MetaVoter, RegressionHead
from humanaes.schema import LEVELS

# InternViT-300M-448px as InternVL2 uses it: LayerNorm, qkv bias, layer scale, no qk-norm, no
# final norm (use_mean_pooling=True makes the final norm an identity in transformers).
VISION_DEFAULTS: dict[str, Any] = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    attention_bias=True,
    use_qk_norm=False,
    norm_type="layer_norm",
    layer_norm_eps=1e-6,
    image_size=448,
    patch_size=14,
    hidden_act="gelu",
    use_mean_pooling=True,
    layer_scale_init_value=0.1,
)

LLM_MODEL_TYPES = ("qwen2", "llama")

# Byte budgets of the vision encoder's largest activation per call (see vision_chunk_size).
_CPU_CHUNK_BYTES = 32 * 1024 * 1024 - 64 * 1024  # just under glibc's DEFAULT_MMAP_THRESHOLD_MAX
_ACCEL_CHUNK_BYTES = 2 * 1024**3


def pixel_shuffle_v2(features: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """InternVL2's pixel shuffle (ps_version v2) on a [T, H, W, C] patch grid.

    Output token (i, j) concatenates the 2x2 block x[2i+m, 2j+k] in (m, k) row-major order:
    channel (2m + k) * C + c holds x[2i+m, 2j+k, c]. Returns [T, H*W*ratio^2, C/ratio^2].
    """
    t, h, w, c = features.shape
    s = int(round(1 / ratio))
    if h % s or w % s:
        raise ValueError(f"patch grid {h}x{w} is not divisible by {s}")
    x = features.reshape(t, h // s, s, w // s, s, c)  # t, i, m, j, k, c
    x = x.permute(0, 1, 3, 2, 4, 5)  # t, i, j, m, k, c
    return x.reshape(t, (h // s) * (w // s), s * s * c)


class VisionProjector(nn.Module):
    """`mlp1`: LayerNorm(4C) -> Linear(4C, d) -> GELU -> Linear(d, d). LayerNorm eps is PyTorch's
    default 1e-5 (the ViT's norms use 1e-6)."""

    def __init__(self, in_features: int, hidden_size: int, act: str = "gelu"):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features)
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))


def build_llm_config(llm: dict[str, Any], attn_implementation: str) -> Any:
    llm = dict(llm)
    model_type = llm.pop("model_type", None)
    if model_type not in LLM_MODEL_TYPES:
        raise ConfigError(f"unsupported language model type {model_type!r}; supported: {', '.join(LLM_MODEL_TYPES)}")
    config = AutoConfig.for_model(model_type, **llm)
    config._attn_implementation = attn_implementation
    return config


def build_vision_config(vision: dict[str, Any], attn_implementation: str) -> InternVLVisionConfig:
    config = InternVLVisionConfig(**{**VISION_DEFAULTS, **vision})
    config._attn_implementation = attn_implementation
    return config


def choose_attn_implementation(requested: str | None, device: torch.device | str, dtype: torch.dtype) -> str:
    """SDPA by default; flash-attention 2 when installed, on CUDA, in half precision."""
    if requested and requested != "auto":
        return requested
    if torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


@dataclass
class LLMOutput:
    hidden_states: torch.Tensor  # final hidden states (after the final norm), [B, N, d]
    cache: Any = None


class HumanAesExpertModel(nn.Module):
    def __init__(self, config: HumanAesConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.attn_implementation = attn_implementation
        vision_config = build_vision_config({**config.vision, "image_size": config.image_size}, attn_implementation)
        self.vision_model = InternVLVisionModel(vision_config)
        scale = int(round(1 / config.downsample_ratio))
        self.projector = VisionProjector(vision_config.hidden_size * scale * scale, config.hidden_size, config.projector_hidden_act)
        llm_config = build_llm_config(config.llm, attn_implementation)
        self.language_model = AutoModelForCausalLM.from_config(llm_config, attn_implementation=attn_implementation)
        heads = config.heads
        self.regression_head = RegressionHead(config.hidden_size) if heads.regression else None
        self.expert_head = (
            ExpertHead(config.hidden_size, heads.expert_hidden, heads.expert_activation) if heads.expert else None
        )
        self.metavoter = MetaVoter(config.metavoter.kind, config.metavoter.hidden)
        # transformers renamed `past_key_values` to `cache` during 5.x; support both spellings.
        params = inspect.signature(self.language_model.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    # -- pieces ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.projector.linear_1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.linear_1.weight.dtype

    @property
    def cache_kwarg(self) -> str:
        """The name this transformers version gives the KV cache argument (of the LLM's forward and
        of `generate()`)."""
        return self._cache_kwarg

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (self.regression_head, self.expert_head, self.metavoter) if m is not None]

    def extract_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[T, 3, 448, 448] tiles -> [T, tokens_per_tile, d] LLM-space image tokens.

        The tiles go through the vision encoder in chunks (`vision_chunk_size`); tiles never
        interact in the encoder, so chunking changes nothing but speed and peak memory."""
        chunk = self.vision_chunk_size(pixel_values.shape[0])
        if pixel_values.shape[0] <= chunk:
            return self._image_features(pixel_values)
        return torch.cat([self._image_features(part) for part in pixel_values.split(chunk)])

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        hidden = self.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]  # drop CLS
        t, n, c = hidden.shape
        side = int(round(n**0.5))
        shuffled = pixel_shuffle_v2(hidden.reshape(t, side, side, c), self.config.downsample_ratio)
        return self.projector(shuffled)

    #: Tiles per vision-encoder call; None = automatic (see `vision_chunk_size`).
    vision_chunk_tiles: int | None = None

    def vision_chunk_size(self, num_tiles: int) -> int:
        """Tiles per vision-encoder call. Automatic choice: the most tiles whose largest activation
        (MLP hidden, tokens x intermediate_size) stays under a byte budget. On CPU the budget is
        glibc's largest mmap threshold (32 MiB): bigger blocks are mmap'ed and page-faulted in
        afresh on every call; one chunk made a 13-tile image ~5-8% slower and ~0.5 GiB heavier
        in bf16 than chunks of 3 (docs/benchmarks.md). On accelerators the budget (2 GiB) only
        bounds peak memory."""
        if self.vision_chunk_tiles:
            return max(1, int(self.vision_chunk_tiles))
        vc = self.vision_model.config
        image, patch = vc.image_size, vc.patch_size
        image = image if isinstance(image, (tuple, list)) else (image, image)
        patch = patch if isinstance(patch, (tuple, list)) else (patch, patch)
        tokens = (image[0] // patch[0]) * (image[1] // patch[1]) + 1
        per_tile = tokens * vc.intermediate_size * torch.finfo(self.dtype).bits // 8
        budget = _CPU_CHUNK_BYTES if self.device.type == "cpu" else _ACCEL_CHUNK_BYTES
        return max(1, min(num_tiles, budget // per_tile))

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None, img_context_id: int) -> torch.Tensor:
        """Token embeddings with the image features written into the `<IMG_CONTEXT>` slots."""
        embeds = self.language_model.get_input_embeddings()(input_ids.to(self.device))
        if image_features is None:
            return embeds
        slots = input_ids.to(self.device) == img_context_id
        n_slots = int(slots.sum())
        n_feats = image_features.shape[0] * image_features.shape[1]
        if n_slots != n_feats:
            raise ValueError(f"prompt has {n_slots} image slots but {n_feats} image tokens were given")
        features = image_features.reshape(-1, image_features.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(slots.unsqueeze(-1), features)

    def run_llm(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> Any:
        """The LLM body (no vocabulary head): final hidden states and, optionally, the KV cache."""
        kwargs = {self._cache_kwarg: cache} if cache is not None else {}
        out = self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        # ModelOutput is a dict of the fields that were set; avoid deprecated attribute access.
        new_cache = None
        if use_cache:
            new_cache = out["cache"] if "cache" in out else out.get("past_key_values")
        result = LLMOutput(hidden_states=out.last_hidden_state, cache=new_cache)
        if output_hidden_states:
            result.all_hidden_states = out.hidden_states  # type: ignore[attr-defined]
        return result

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_output_embeddings()(hidden)

    # -- heads -----------------------------------------------------------------------------
    def level_scores(self, logits: torch.Tensor, level_token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LM head: softmax over the five level words' first tokens -> (probs [B,5] in LEVELS
        order, score = probs . bin centres)."""
        level_logits = logits.float().index_select(-1, level_token_ids.to(logits.device))
        probs = torch.softmax(level_logits, dim=-1)
        weights = torch.tensor([self.config.level_weights[level] for level in LEVELS], device=probs.device)
        return probs, probs @ weights

    def regression(self, pooled: torch.Tensor) -> torch.Tensor | None:
        if self.regression_head is None:
            return None
        return self.regression_head(pooled.to(self.regression_head.linear.weight.dtype))

    def expert(self, pooled: torch.Tensor) -> torch.Tensor | None:
        if self.expert_head is None:
            return None
        return self.expert_head(pooled.to(self.expert_head.expert_head1.weight.dtype))

    def vote(self, lm: torch.Tensor, regression: torch.Tensor | None, expert_overall: torch.Tensor | None) -> torch.Tensor | None:
        if regression is None or expert_overall is None:
            return None
        return self.metavoter(torch.stack([lm.float(), regression.float(), expert_overall.float()], dim=-1))

    def to_inference_dtype(self, dtype: torch.dtype) -> "HumanAesExpertModel":
        """Cast the backbone; the tiny heads stay in float32 for precision."""
        self.to(dtype)
        for module in self.head_modules():
            module.float()
        return self
