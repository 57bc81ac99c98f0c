"""Official InternVL2 / HumanAesExpert checkpoints (remote-code layout) -> our native modules.

Declarative rename tables map original keys onto HumanAesExpertModel's; three tensors need real
conversion: the ViT's fused `attn.qkv` (plain [q; k; v]), InternLM2's `wqkv` (interleaved per kv
group) and the heads, which are matched by name and shape. Nothing here needs the original
Python files, and nothing is silently random-initialised.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from humanaes.errors import CheckpointError, ConfigError
from humanaes.models.expert.config import HumanAesConfig

# (pattern, replacement) applied with re.fullmatch, first match wins.
VISION_RENAMES: list[tuple[str, str]] = [
    (r"vision_model\.embeddings\.class_embedding", r"vision_model.embeddings.cls_token"),
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", r"vision_model.embeddings.patch_embeddings.projection.\1"),
    (r"vision_model\.embeddings\.position_embedding", r"vision_model.embeddings.position_embeddings"),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layer.\1.attention.projection_layer.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls1", r"vision_model.encoder.layer.\1.lambda_1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls2", r"vision_model.encoder.layer.\1.lambda_2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layer.\1.layernorm_before.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layer.\1.layernorm_after.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layer.\1.mlp.\2.\3"),
]
PROJECTOR_RENAMES: list[tuple[str, str]] = [
    (r"mlp1\.0\.(weight|bias)", r"projector.layer_norm.\1"),
    (r"mlp1\.1\.(weight|bias)", r"projector.linear_1.\1"),
    (r"mlp1\.3\.(weight|bias)", r"projector.linear_2.\1"),
]
# Qwen2 keys are already transformers' names.
QWEN2_RENAMES: list[tuple[str, str]] = [
    (r"language_model\.(model\..+|lm_head\.weight)", r"language_model.\1"),
]
INTERNLM2_RENAMES: list[tuple[str, str]] = [
    (r"language_model\.model\.tok_embeddings\.weight", r"language_model.model.embed_tokens.weight"),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wo\.weight", r"language_model.model.layers.\1.self_attn.o_proj.weight"),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.weight", r"language_model.model.layers.\1.mlp.gate_proj.weight"),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.weight", r"language_model.model.layers.\1.mlp.up_proj.weight"),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.weight", r"language_model.model.layers.\1.mlp.down_proj.weight"),
    (r"language_model\.model\.layers\.(\d+)\.attention_norm\.weight", r"language_model.model.layers.\1.input_layernorm.weight"),
    (r"language_model\.model\.layers\.(\d+)\.ffn_norm\.weight", r"language_model.model.layers.\1.post_attention_layernorm.weight"),
    (r"language_model\.model\.norm\.weight", r"language_model.model.norm.weight"),
    (r"language_model\.output\.weight", r"language_model.lm_head.weight"),
]
REGRESSION_RENAMES: list[tuple[str, str]] = [
    (r"language_model\.lm_regression_head\.(?:.*\.)?(weight|bias)", r"regression_head.linear.\1"),
]
VIT_QKV = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)")
INTERNLM2_WQKV = re.compile(r"language_model\.model\.layers\.(\d+)\.attention\.wqkv\.weight")
EXPERT_HEAD = re.compile(r"language_model\.expert_head\.(expert_head[1-4])\.(.+)")
# Keys of the original code that hold no weights we need.
IGNORED = re.compile(r".*(rotary_emb\.inv_freq|\.num_batches_tracked)$")


def rename_key(key: str, tables: list[list[tuple[str, str]]]) -> str | None:
    """Apply the first matching (pattern, replacement) of `tables` (re.fullmatch), or None."""
    for table in tables:
        for pattern, replacement in table:
            match = re.fullmatch(pattern, key)
            if match:
                return match.expand(replacement)
    return None


def split_vit_qkv(layer: str, kind: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """Fused ViT qkv is plain [q; k; v] along the output dimension."""
    q, k, v = tensor.chunk(3, dim=0)
    base = f"vision_model.encoder.layer.{layer}.attention"
    yield f"{base}.q_proj.{kind}", q
    yield f"{base}.k_proj.{kind}", k
    yield f"{base}.v_proj.{kind}", v


def split_internlm2_wqkv(layer: str, tensor: torch.Tensor, num_heads: int, num_kv_heads: int) -> Iterator[tuple[str, torch.Tensor]]:
    """InternLM2's wqkv rows are grouped per kv head: [kv, groups + 2, head_dim, hidden], each kv
    head's `groups` query heads, then its key, then its value."""
    groups = num_heads // num_kv_heads
    hidden = tensor.shape[-1]
    head_dim = tensor.shape[0] // (num_kv_heads * (groups + 2))
    w = tensor.reshape(num_kv_heads, groups + 2, head_dim, hidden)
    base = f"language_model.model.layers.{layer}.self_attn"
    yield f"{base}.q_proj.weight", w[:, :groups].reshape(num_heads * head_dim, hidden)
    yield f"{base}.k_proj.weight", w[:, groups].reshape(num_kv_heads * head_dim, hidden)
    yield f"{base}.v_proj.weight", w[:, groups + 1].reshape(num_kv_heads * head_dim, hidden)


def convert_state_dict(
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]],
    config: HumanAesConfig,
    expected: dict[str, torch.Size],
) -> dict[str, torch.Tensor]:
    """Rename/convert an original-layout state dict (given lazily) to our keys.

    `expected` maps our parameter names to shapes; the expert head is matched by shape. Raises
    CheckpointError listing unexpected keys (nothing is dropped silently).
    """
    # Our 8B-style configs are Llama converted from InternLM2; 1B-style ones are Qwen2.
    llm_tables = INTERNLM2_RENAMES if config.llm["model_type"] == "llama" else QWEN2_RENAMES
    tables = [VISION_RENAMES, PROJECTOR_RENAMES, llm_tables, REGRESSION_RENAMES]
    out: dict[str, torch.Tensor] = {}
    expert_parts: dict[str, dict[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in tensors():
        if IGNORED.fullmatch(key):
            continue
        if m := VIT_QKV.fullmatch(key):
            out.update(split_vit_qkv(m.group(1), m.group(2), tensor))
            continue
        if m := INTERNLM2_WQKV.fullmatch(key):
            out.update(
                split_internlm2_wqkv(m.group(1), tensor, config.llm["num_attention_heads"], config.llm["num_key_value_heads"])
            )
            continue
        if m := EXPERT_HEAD.fullmatch(key):
            expert_parts.setdefault(m.group(1), {})[m.group(2)] = tensor
            continue
        new_key = rename_key(key, tables)
        if new_key is None or new_key not in expected:
            unexpected.append(key)
            continue
        out[new_key] = tensor
    if expert_parts:
        out.update(map_expert_head(expert_parts, expected))
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else "")
        raise CheckpointError(f"checkpoint has {len(unexpected)} key(s) this model does not know: {shown}")
    return out


def map_expert_head(parts: dict[str, dict[str, torch.Tensor]], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Map `expert_headK.*` tensors onto ours by order and shape (original sub-module names are
    not documented; shapes are). Weights and biases are paired in their natural order."""
    out: dict[str, torch.Tensor] = {}
    for module, tensors in sorted(parts.items()):
        ours = [k for k in expected if k.startswith(f"expert_head.{module}.")]
        theirs = sorted(tensors.items(), key=lambda kv: _natural_key(kv[0]))
        ours_sorted = sorted(ours, key=_natural_key)
        our_shapes = [tuple(expected[k]) for k in ours_sorted]
        their_shapes = [tuple(t.shape) for _, t in theirs]
        if our_shapes != their_shapes:
            raise CheckpointError(
                f"expert head {module}: checkpoint tensors {[(k, s) for (k, _), s in zip(theirs, their_shapes)]} do not "
                f"match this model's {list(zip(ours_sorted, our_shapes))}; set heads.expert_hidden / expert_activation "
                "in the model config to the checkpoint's architecture"
            )
        out.update({our: t for our, (_, t) in zip(ours_sorted, theirs)})
    return out


def _natural_key(key: str) -> tuple[list[Any], int, str]:
    """Sort sub-module tensors by layer number, then weight before bias."""
    stem, _, leaf = key.rpartition(".")
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", stem)], {"weight": 0, "bias": 1}.get(leaf, 2), leaf


# -- config ------------------------------------------------------------------------------------

_VISION_KEYS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "layer_norm_eps": "layer_norm_eps",
    "image_size": "image_size",
    "patch_size": "patch_size",
    "hidden_act": "hidden_act",
    "norm_type": "norm_type",
}
_QWEN2_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "rms_norm_eps", "max_position_embeddings", "bos_token_id", "eos_token_id",
    "use_sliding_window", "sliding_window", "max_window_layers",
)
_INTERNLM2_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "rms_norm_eps", "max_position_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id",
)


def _rope(llm: dict[str, Any]) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        rope.update({k: v for k, v in scaling.items() if k != "type"})
        rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    return rope


def config_from_internvl_chat(original: dict[str, Any], name: str = "internvl2") -> HumanAesConfig:
    """Translate an original `internvl_chat` config.json into our config."""
    if original.get("model_type") != "internvl_chat":
        raise ConfigError(f"expected model_type 'internvl_chat', found {original.get('model_type')!r}")
    if original.get("ps_version", "v2") != "v2":
        raise ConfigError(f"pixel shuffle version {original.get('ps_version')!r} is not supported (only v2)")
    if original.get("select_layer", -1) != -1:
        raise ConfigError("select_layer other than -1 is not supported")
    vc = original["vision_config"]
    if vc.get("qk_normalization"):
        raise ConfigError("InternViT with qk_normalization (InternViT-6B) is not supported; HumanAesExpert uses InternViT-300M")
    vision = {ours: vc[theirs] for theirs, ours in _VISION_KEYS.items() if theirs in vc}
    vision["attention_bias"] = bool(vc.get("qkv_bias", True))
    lc = original["llm_config"]
    source = lc.get("model_type")
    if source == "qwen2":
        llm = {k: lc[k] for k in _QWEN2_KEYS if k in lc and lc[k] is not None}
        llm["model_type"] = "qwen2"
    elif source == "internlm2":
        llm = {k: lc[k] for k in _INTERNLM2_KEYS if k in lc and lc[k] is not None}
        llm["model_type"] = "llama"
        llm["attention_bias"] = bool(lc.get("bias", False))
        llm["mlp_bias"] = False
    else:
        raise ConfigError(f"unsupported language model {source!r} in this checkpoint (supported: qwen2, internlm2)")
    llm["rope_parameters"] = _rope(lc)
    llm["tie_word_embeddings"] = False  # InternVLChatConfig forces this
    return HumanAesConfig(
        name=name,
        vision=vision,
        llm=llm,
        downsample_ratio=float(original.get("downsample_ratio", 0.5)),
        image_size=int(original.get("force_image_size") or vc.get("image_size", 448)),
        max_tiles=int(original.get("max_dynamic_patch", 12)),
        min_tiles=int(original.get("min_dynamic_patch", 1)),
        use_thumbnail=bool(original.get("use_thumbnail", True)),
        template=original.get("template", "Hermes-2"),
        system_message=original.get("system_message"),
        torch_dtype=str(original.get("torch_dtype") or lc.get("torch_dtype") or "float32"),
    )
