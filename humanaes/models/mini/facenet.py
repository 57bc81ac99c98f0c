"""dlib's face-recognition ResNet (`dlib.face_recognition_model_v1`) as a PyTorch module.

The network maps an aligned 150x150 RGB face chip to a 128-d descriptor; pictures of the same
person land within about 0.6 (Euclidean) of each other. It is the ResNet-29 of
`dnn_face_recognition_ex.cpp` (stem conv 7x7/2 + max-pool 3x3/2, then 14 residual blocks of
32, 64, 128, 256, 256 channels, global average pooling and a 128-d linear layer without bias).

Weights: `dlib_face_recognition_resnet_model_v1.dat` by Davis E. King, released under
CC0 1.0 (public domain), taken from the PyPI package `face_recognition_models==0.3.0`.
At training time `recipes/dlib_dat.py` reads that file (dlib's own binary serialization) into a
state dict for `DlibFaceResNet`; dlib itself is not needed, and the runtime only ever loads
safetensors. The module definition and the converter are our own code, written from the format
and layer semantics of dlib's sources; outputs match
`face_recognition_model_v1.compute_face_descriptor(chip)` to within 1e-6
(`recipes/check_dlib_port.py`).

Chips must be aligned as `dlib.get_face_chip(img, shape5, size=150, padding=0.25)` does it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

#: (channels, number of residual blocks, whether the first block halves the resolution)
#: Spatial sizes with dlib's padding rules: 150 -> 72 (conv) -> 35 (pool) -> 35, 17, 8, 4, 2.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True)
)
CHIP_SIZE = 150
EMBED_DIM = 128
FEATURE_DIM = 256
#: Width of `pooled_levels`: every block's channels, summed.
POOLED_LEVELS_DIM = sum(c * n for c, n, _ in STAGES)
#: Width of the last block's map (256 channels x 2 x 2 for a 150-pixel chip).
LAST_MAP_DIM = STAGES[-1][0] * 2 * 2
#: dlib's input_rgb_image_sized defaults; the real values are read from the .dat into `input_mean`.
_DLIB_RGB_MEAN = (122.782, 117.001, 104.298)


class _Affine(nn.Module):
    """dlib `affine_` layer: batch norm frozen into a per-channel scale and shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None])


def _conv(cin: int, cout: int, k: int, stride: int) -> nn.Conv2d:
    # dlib's con_ pads k//2 only when stride is 1 and does not pad at all when striding.
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else 0)


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib `add_prev_`: sum of two tensors whose shapes may differ; the result takes the larger
    size of each dimension and a missing value counts as zero (both anchored at index 0)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    pad = lambda t: F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))  # noqa: E731
    return pad(a) + pad(b)


class _Block(nn.Module):
    """dlib `ares` / `ares_down`: relu(affine(conv(relu(affine(conv(x))))) + skip(x)).

    In the down-sampling block the skip path is a 2x2/2 average pool; the unpadded stride-2 conv
    can come out one pixel smaller than that pool (3x3 against 4x4 on an 8x8 input, 1x1 against
    2x2 on 4x4) and has more channels, which `_add_prev` settles the way dlib does."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1, self.aff1 = _conv(cin, cout, 3, 2 if down else 1), _Affine(cout)
        self.conv2, self.aff2 = _conv(cout, cout, 3, 1), _Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: both inputs of each relu are fresh tensors, and a new output costs more than the relu
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)), inplace=True)))
        return F.relu(_add_prev(y, F.avg_pool2d(x, 2, 2) if self.down else x), inplace=True)


class DlibFaceResNet(nn.Module):
    """Input (N, 3, 150, 150) RGB floats in [0, 255]; output the (N, 128) raw (not normalised)
    descriptor of `dlib.face_recognition_model_v1.compute_face_descriptor`."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(_DLIB_RGB_MEAN, dtype=torch.float32))
        self.conv1, self.aff1 = _conv(3, 32, 7, 2), _Affine(32)
        blocks, cin = [], 32
        for cout, n, down in STAGES:
            for i in range(n):
                blocks.append(_Block(cin, cout, down and i == 0))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(FEATURE_DIM, EMBED_DIM, bias=False)
        self.channels_last = False  # set by optimize_for_inference

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean[:, None, None]) / 256.0  # dlib divides by 256, not 255 or a std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.max_pool2d(F.relu(self.aff1(self.conv1(x))), 3, 2)  # unpadded, like dlib's

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 256-d globally pooled activations that feed the descriptor layer."""
        return self.blocks(self._stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    @torch.no_grad()
    def fold_affines(self) -> "DlibFaceResNet":
        """Fold every affine layer into the convolution before it (inference only; about 10 %
        faster on CPU). The weights can no longer be saved in dlib's layout afterwards."""
        pairs = [(self.conv1, self.aff1)] + [
            (conv, aff) for block in self.blocks for conv, aff in ((block.conv1, block.aff1), (block.conv2, block.aff2))
        ]
        for conv, aff in pairs:
            if not isinstance(aff, _Affine):
                continue
            conv.weight.mul_(aff.weight[:, None, None, None])
            conv.bias.mul_(aff.weight).add_(aff.bias)
        self.aff1 = nn.Identity()
        for block in self.blocks:
            block.aff1, block.aff2 = nn.Identity(), nn.Identity()
        return self

    @torch.no_grad()
    def optimize_for_inference(self) -> "DlibFaceResNet":
        """Fold the affine layers and switch to channels-last memory format (together about
        1.4x faster on CPU). Inference only."""
        self.fold_affines()  # a no-op on layers already folded
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def pooled_levels(self, x: torch.Tensor, last_map: bool = False) -> torch.Tensor:
        """Global average of every residual block's output, concatenated: (N, 1760); with
        `last_map`, followed by the last block's whole 2x2 map, flattened: (N, 1760 + 1024).

        The earlier blocks describe skin, texture and shape rather than identity, which the
        attractiveness head needs (on MEBeauty val a head on these beats one on the 256-d
        final features, 0.74 vs 0.72 PLCC). The 2x2 map keeps where things are in the chip
        (upper/lower, left/right face), which global averages lose."""
        x = self._stem(x)
        pooled = []
        for block in self.blocks:
            x = block(x)
            pooled.append(x.mean(dim=(2, 3)))
        if last_map:
            pooled.append(x.flatten(1))
        return torch.cat(pooled, 1)


def load_dlib_facenet(path: str | Path) -> DlibFaceResNet:
    """Build the module from a .safetensors written from dlib's .dat by `recipes/dlib_dat.py`
    (the bundled model carries these weights inside humanaes-mini.safetensors, under `face.facenet.`)."""
    from humanaes.errors import CheckpointError
    from humanaes.safetensors_io import load_safetensors

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: the face network loads only .safetensors; convert dlib's .dat with "
            "`python recipes/dlib_dat.py MODEL.dat OUT.safetensors` (a training-time tool, not installed)"
        )
    model = DlibFaceResNet()
    model.load_state_dict(load_safetensors(path))
    return model.eval()
