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

The three heads are HumanAesExpert's own classes (`humanaes.models.heads`), not copies.

The switch of the reference applies: a row with twelve-dimension labels (`is_expert`) trains the
expert head, a row with only an overall label trains the regression head. What was actually
trained is recorded in the checkpoint (`MiniConfig.trained_heads`); untrained heads never produce
output (their ScoreResult fields stay None).

ImageNet initialisation (training time only) maps torchvision's MobileNetV2 or an
EfficientNet-Lite0 state dict onto these modules: `recipes/imagenet_init.py`, outside the package.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from humanaes.errors import ConfigError
from humanaes.models.heads import ExpertHead, MetaVoter, RegressionHead
from humanaes.models.mini.config import MINI_TRAINABLE_HEADS, FaceConfig, MiniConfig
from humanaes.runtime import autocast_to
from humanaes.schema import OVERALL

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


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) feature extractor: (N, 3, H, W) -> (N, 1280, H/32, W/32)."""

    def __init__(self, feature_dim: int = 1280):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        self.blocks, cin = _inverted_residual_blocks(((3, s, t, c, n) for t, c, n, s in MOBILENET_V2_SETTINGS), ConvBN)
        self.head = ConvBN(cin, feature_dim, 1)
        _init_conv_bn(self)

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


ConvBNLayer = type[ConvBN] | type[SameConvBN]


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual, which is also EfficientNet-Lite's MBConv (Lite drops the
    squeeze-excitation): [1x1 expansion, skipped when t = 1] -> kxk depthwise -> linear 1x1
    projection, + skip when the shapes allow. `conv_bn` is the family's conv-BN-ReLU6 layer:
    ConvBN (PyTorch padding) for MobileNetV2, SameConvBN (TensorFlow SAME padding) for Lite."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, conv_bn: ConvBNLayer = ConvBN):
        super().__init__()
        hidden = cin * expansion
        self.expand = conv_bn(cin, hidden, 1) if expansion != 1 else None
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn(hidden, cout, 1, act=False)
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
        self.blocks, cin = _inverted_residual_blocks(EFFICIENTNET_LITE0_SETTINGS, SameConvBN)
        self.head = SameConvBN(cin, feature_dim, 1)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _inverted_residual_blocks(
    stages: Iterable[tuple[int, int, int, int, int]], conv_bn: ConvBNLayer, cin: int = 32
) -> tuple[nn.Sequential, int]:
    """The blocks of (kernel, first stride, expansion, output channels, repeats) stages after a
    `cin`-channel stem, and their output channels (the stride applies to a stage's first block)."""
    blocks: list[nn.Module] = []
    for kernel, stride, expansion, cout, repeats in stages:
        for i in range(repeats):
            blocks.append(InvertedResidual(cin, cout, kernel, stride if i == 0 else 1, expansion, conv_bn))
            cin = cout
    return nn.Sequential(*blocks), cin


def _init_conv_bn(net: nn.Module) -> None:
    """Random initialisation of a backbone's convolutions (Kaiming, fan-out) and BatchNorms."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- model ---------------------------------------------------------------------------------


class HumanAesMini(nn.Module):
    """Backbone + pooled feature + HumanAesExpert's heads. Input: normalised float images."""

    def __init__(self, config: MiniConfig | None = None):
        super().__init__()
        self.config = config or MiniConfig()
        self.config.validate()
        backbone_cls = EfficientNetLite0 if self.config.backbone == "efficientnet_lite0" else MobileNetV2
        self.backbone = backbone_cls(self.config.feature_dim)
        self.dropout = nn.Dropout(self.config.dropout)
        self.regression_head = RegressionHead(self.config.feature_dim)
        self.expert_head = ExpertHead(self.config.feature_dim, self.config.expert_hidden)
        # Two inputs (no LM head); fitted exactly when the config lists it as trained.
        self.metavoter = MetaVoter(
            "mlp", self.config.metavoter_hidden, num_inputs=2, fitted="metavoter" in self.config.trained_heads
        )
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
                module.conv, module.bn = fuse_conv_bn_eval(module.conv, module.bn), nn.Identity()
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
        regression = self.regression_head(feature)
        expert = self.expert_head(feature)
        metavoter = self.metavoter(torch.stack([regression, expert[:, OVERALL]], dim=1))
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
        heads = [h for h in MINI_TRAINABLE_HEADS if all(h in c.trained_heads for c in configs)]
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
