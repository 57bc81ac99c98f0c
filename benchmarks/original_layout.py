"""Write a HumanAesExpertModel in the ORIGINAL InternVL2 / HumanAesExpert checkpoint layout.

The inverse of humanaes/convert.py, for benchmarks and tests: random-init models saved the way the
release is stored (one `model.safetensors` in `internvl_chat` layout, fp16 by default), so that
the original-layout loader and an official-style fp32 load can be timed on a realistic file.

- ViT: q/k/v projections fused back into `attn.qkv` ([q; k; v] along the output dimension);
- InternLM2 (our Llama): q/k/v fused into `wqkv`, interleaved per kv group;
- heads under `language_model.` with the release's names (`lm_regression_head`,
  `expert_head.expert_headK.{0,2}` for the parent feed-forward nets);
- the MetaVoter is not part of the release and is not written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from humanaes.models.expert.convert import rename_key
from humanaes.models.expert.tokenization import PACKAGED_PREFIX, packaged_tokenizer_dir

# (pattern on OUR key, replacement = ORIGINAL key), first match wins (re.fullmatch).
_VISION = [
    (r"vision_model\.embeddings\.cls_token", r"vision_model.embeddings.class_embedding"),
    (r"vision_model\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"vision_model\.embeddings\.position_embeddings", r"vision_model.embeddings.position_embedding"),
    (r"vision_model\.encoder\.layer\.(\d+)\.attention\.projection_layer\.(weight|bias)", r"vision_model.encoder.layers.\1.attn.proj.\2"),
    (r"vision_model\.encoder\.layer\.(\d+)\.lambda_1", r"vision_model.encoder.layers.\1.ls1"),
    (r"vision_model\.encoder\.layer\.(\d+)\.lambda_2", r"vision_model.encoder.layers.\1.ls2"),
    (r"vision_model\.encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"vision_model.encoder.layers.\1.norm1.\2"),
    (r"vision_model\.encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"vision_model.encoder.layers.\1.norm2.\2"),
    (r"vision_model\.encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
]
_PROJECTOR = [
    (r"projector\.layer_norm\.(weight|bias)", r"mlp1.0.\1"),
    (r"projector\.linear_1\.(weight|bias)", r"mlp1.1.\1"),
    (r"projector\.linear_2\.(weight|bias)", r"mlp1.3.\1"),
]
_QWEN2 = [(r"language_model\.(model\..+|lm_head\.weight)", r"language_model.\1")]
_INTERNLM2 = [
    (r"language_model\.model\.embed_tokens\.weight", r"language_model.model.tok_embeddings.weight"),
    (r"language_model\.model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"language_model.model.layers.\1.attention.wo.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"language_model.model.layers.\1.feed_forward.w1.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"language_model.model.layers.\1.feed_forward.w3.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"language_model.model.layers.\1.feed_forward.w2.weight"),
    (r"language_model\.model\.layers\.(\d+)\.input_layernorm\.weight", r"language_model.model.layers.\1.attention_norm.weight"),
    (r"language_model\.model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"language_model.model.layers.\1.ffn_norm.weight"),
    (r"language_model\.model\.norm\.weight", r"language_model.model.norm.weight"),
    (r"language_model\.lm_head\.weight", r"language_model.output.weight"),
]
_HEADS = [
    (r"regression_head\.linear\.(weight|bias)", r"language_model.lm_regression_head.\1"),
    (r"expert_head\.expert_head1\.(weight|bias)", r"language_model.expert_head.expert_head1.\1"),
    (r"expert_head\.(expert_head[234])\.fc1\.(weight|bias)", r"language_model.expert_head.\1.0.\2"),
    (r"expert_head\.(expert_head[234])\.fc2\.(weight|bias)", r"language_model.expert_head.\1.2.\2"),
]
_VIT_QKV = re.compile(r"vision_model\.encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)")
_LLAMA_QKV = re.compile(r"language_model\.model\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.weight")
_SKIP = re.compile(r"metavoter\..*")


def fuse_internlm2_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """[q; k; v] (Llama layout) -> InternLM2 `wqkv`: per kv head, its query heads, key, value."""
    groups = num_heads // num_kv_heads
    hidden = q.shape[-1]
    head_dim = q.shape[0] // num_heads
    qg = q.reshape(num_kv_heads, groups, head_dim, hidden)
    kg = k.reshape(num_kv_heads, 1, head_dim, hidden)
    vg = v.reshape(num_kv_heads, 1, head_dim, hidden)
    return torch.cat([qg, kg, vg], dim=1).reshape(num_kv_heads * (groups + 2) * head_dim, hidden)


def to_original_state_dict(model: Any, dtype: torch.dtype | None = torch.float16) -> dict[str, torch.Tensor]:
    """Our state dict -> original keys (tensors cast to `dtype`, contiguous, no shared storage)."""
    config = model.config
    internlm2 = config.llm["model_type"] == "llama"
    tables = [_VISION, _PROJECTOR, _INTERNLM2 if internlm2 else _QWEN2, _HEADS]
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    vit_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    llm_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.contiguous().clone()

    for key, tensor in state.items():
        if _SKIP.fullmatch(key):
            continue
        if m := _VIT_QKV.fullmatch(key):
            vit_parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = tensor
            continue
        if internlm2 and (m := _LLAMA_QKV.fullmatch(key)):
            llm_parts.setdefault(m.group(1), {})[m.group(2)] = tensor
            continue
        new = rename_key(key, tables)
        if new is None:
            unknown.append(key)
            continue
        out[new] = cast(tensor)
    if unknown:
        raise ValueError(f"no original name for {unknown[:8]}")
    for (layer, kind), parts in vit_parts.items():
        out[f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"] = cast(torch.cat([parts["q"], parts["k"], parts["v"]]))
    for layer, parts in llm_parts.items():
        fused = fuse_internlm2_wqkv(parts["q"], parts["k"], parts["v"], config.llm["num_attention_heads"], config.llm["num_key_value_heads"])
        out[f"language_model.model.layers.{layer}.attention.wqkv.weight"] = cast(fused)
    return out


def original_config(config: Any, torch_dtype: str = "float16") -> dict[str, Any]:
    """An `internvl_chat` config.json that humanaes.models.expert.convert.config_from_internvl_chat reads back."""
    from humanaes.models.expert.modeling import VISION_DEFAULTS

    vision = {**VISION_DEFAULTS, **config.vision}
    llm = dict(config.llm)
    rope = dict(llm.pop("rope_parameters", {}) or {})
    model_type = llm.pop("model_type")
    llm.pop("tie_word_embeddings", None)
    rope_theta = rope.pop("rope_theta", 10000.0)
    rope_type = rope.pop("rope_type", "default")
    if model_type == "llama":
        llm_config = {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "bias": bool(llm.pop("attention_bias", False)),
            **{k: v for k, v in llm.items() if k != "mlp_bias"},
        }
    else:
        llm_config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **llm}
    llm_config["rope_theta"] = rope_theta
    llm_config["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **rope}
    llm_config["torch_dtype"] = torch_dtype
    llm_config["tie_word_embeddings"] = False
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "downsample_ratio": config.downsample_ratio,
        "dynamic_image_size": True,
        "force_image_size": config.image_size,
        "max_dynamic_patch": config.max_tiles,
        "min_dynamic_patch": config.min_tiles,
        "use_thumbnail": config.use_thumbnail,
        "ps_version": "v2",
        "select_layer": -1,
        "template": config.template,
        "torch_dtype": torch_dtype,
        "tie_word_embeddings": False,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": vision["hidden_size"],
            "num_hidden_layers": vision["num_hidden_layers"],
            "num_attention_heads": vision["num_attention_heads"],
            "intermediate_size": vision["intermediate_size"],
            "layer_norm_eps": vision["layer_norm_eps"],
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "hidden_act": vision["hidden_act"],
            "norm_type": vision["norm_type"],
            "qkv_bias": bool(vision["attention_bias"]),
            "qk_normalization": bool(vision["use_qk_norm"]),
            "num_channels": 3,
        },
        "llm_config": llm_config,
    }


def save_original(model: Any, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write config.json, model.safetensors (original keys, `dtype`) and the tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype_name = str(dtype).replace("torch.", "")
    (folder / "config.json").write_text(json.dumps(original_config(model.config, dtype_name), indent=2) + "\n")
    save_file(to_original_state_dict(model, dtype), str(folder / "model.safetensors"), metadata={"format": "pt"})
    tok = model.config.tokenizer
    if tok and str(tok).startswith(PACKAGED_PREFIX):
        src = packaged_tokenizer_dir(str(tok)[len(PACKAGED_PREFIX):])
    else:
        src = Path(str(tok)) if tok else None
    if src is not None and src.is_dir():
        for f in src.iterdir():
            if f.is_file() and (f.name.startswith("tokenizer") or f.name == "special_tokens_map.json"):
                shutil.copy2(f, folder / f.name)
    return folder
