"""dlib's face-recognition ResNet (`dlib.face_recognition_model_v1`) as a PyTorch module.

The network maps an aligned 150x150 RGB face chip to a 128-d descriptor; pictures of the same
person land within about 0.6 (Euclidean) of each other. It is the ResNet-29 of
`dnn_face_recognition_ex.cpp` (stem conv 7x7/2 + max-pool 3x3/2, then 14 residual blocks of
32, 64, 128, 256, 256 channels, global average pooling and a 128-d linear layer without bias).

Weights: `dlib_face_recognition_resnet_model_v1.dat` by Davis E. King, released under
CC0 1.0 (public domain), taken from the PyPI package `face_recognition_models==0.3.0`.
`convert_dlib_dat` reads that file (dlib's own binary serialization) into a state dict for
`DlibFaceResNet`; dlib itself is not needed. The module definition and the converter are our
own code, written from the format and layer semantics of dlib's sources; outputs match
`face_recognition_model_v1.compute_face_descriptor(chip)` to within 1e-6
(`recipes/check_dlib_port.py`).

Chips must be aligned as `dlib.get_face_chip(img, shape5, size=150, padding=0.25)` does it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: (channels, number of residual blocks, whether the first block halves the resolution)
#: Spatial sizes with dlib's padding rules: 150 -> 72 (conv) -> 35 (pool) -> 35, 17, 8, 4, 2.
_STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True)
)
CHIP_SIZE = 150
EMBED_DIM = 128
FEATURE_DIM = 256
#: Width of `pooled_levels`: every block's channels, summed.
POOLED_LEVELS_DIM = sum(c * n for c, n, _ in _STAGES)
#: Width of the last block's map (256 channels x 2 x 2 for a 150-pixel chip).
LAST_MAP_DIM = _STAGES[-1][0] * 2 * 2
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
        for cout, n, down in _STAGES:
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


# ---------------------------------------------------------------------------------------------
# Reading dlib's serialization of `anet_type` (loss_metric<fc_no_bias<128, avg_pool_everything<
# alevel0<...alevel4<max_pool<relu<affine<con<input_rgb_image_sized<150>>>>>>...>>>>).
#
# Every layer wrapper writes its version number and then its inner network before its own
# content, so the file holds all wrapper versions from the outside in and then the layer contents
# from the input out. Tags, skips and add_prev carry no tag number, so the wiring is taken from our
# architecture and the file is checked against it layer by layer.


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("dlib .dat: unexpected end of file")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        # One control byte (bit 7: negative, bits 0-3: byte count), then |value| little-endian.
        ctrl = self.take(1)[0]
        if ctrl & 0x70 or (ctrl & 0x0F) > 8:
            raise ValueError(f"dlib .dat: bad integer control byte {ctrl:#x} at offset {self.pos - 1}")
        value = int.from_bytes(self.take(ctrl & 0x0F), "little")
        return -value if ctrl & 0x80 else value

    def real(self) -> float:
        # dlib writes a float as two integers, mantissa then exponent: value = mantissa * 2**exponent.
        mantissa, exponent = self.integer(), self.integer()
        if exponent >= 32000:  # dlib's markers for inf, -inf and nan
            return (math.inf, -math.inf, math.nan)[min(exponent - 32000, 2)]
        return math.ldexp(mantissa, exponent)

    def flag(self) -> bool:
        c = self.take(1)
        if c not in (b"0", b"1"):
            raise ValueError(f"dlib .dat: bad bool {c!r} at offset {self.pos - 1}")
        return c == b"1"

    def string(self) -> str:
        # Only short ASCII names occur in the files we read (layer and version tags).
        n = self.integer()
        raw = self.take(n) if 0 <= n <= 64 else b""
        if len(raw) != n or not raw.isascii():
            raise ValueError(f"dlib .dat: no layer name at offset {self.pos} (not a dlib DNN file?)")
        return raw.decode("ascii")

    def tensor(self) -> np.ndarray:
        # Tensors (version 2) are written as raw little-endian float32 after their 4 dimensions.
        self.expect(self.integer(), 2, "tensor version")
        shape = tuple(self.integer() for _ in range(4))
        count = math.prod(shape)
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        self.expect(self.integer(), 1, "alias_tensor version")
        return tuple(self.integer() for _ in range(4))

    def expect(self, got: object, want: object, what: str) -> None:
        if got != want:
            raise ValueError(f"dlib .dat: {what} is {got!r:.80}, expected {want!r} (offset {self.pos})")


def _expected_layers() -> list[tuple]:
    """dlib's layers from the input out, as (kind, *parameters, state-dict prefix)."""
    layers: list[tuple] = [("con", 32, 7, 2, "conv1"), ("affine", "aff1"), ("relu",), ("max_pool", 3, 2)]
    i = 0
    for cout, n, down in _STAGES:
        for j in range(n):
            d = down and j == 0
            p = f"blocks.{i}."
            layers += [("tag",), ("con", cout, 3, 2 if d else 1, p + "conv1"), ("affine", p + "aff1"), ("relu",),
                       ("con", cout, 3, 1, p + "conv2"), ("affine", p + "aff2")]
            layers += [("tag",), ("skip",), ("avg_pool", 2, 2)] if d else []
            layers += [("add_prev",), ("relu",)]
            i += 1
    return layers + [("avg_pool", 0, 1), ("fc", EMBED_DIM, "fc")]


def convert_dlib_dat(path: str | Path) -> dict[str, torch.Tensor]:
    """Parse `dlib_face_recognition_resnet_model_v1.dat` into a float32 state dict for
    `DlibFaceResNet`. Raises ValueError if the file is not that network."""
    r = _Reader(Path(path).read_bytes())
    r.expect(r.integer(), 1, "add_loss_layer version")
    r.expect(r.string(), "loss_metric_2", "loss layer")
    for _ in range(2):
        r.real()  # margin and distance threshold of the training loss: unused at inference
    layers = _expected_layers()
    versions = [r.integer() for _ in layers]  # outermost layer first
    versions.reverse()  # now aligned with `layers`
    for n, ((kind, *_), v) in enumerate(zip(layers, versions)):
        ok = (1,) if kind in ("tag", "skip") else (2, 3) if n == 0 else (1, 2)  # layer 0 wraps the input
        r.expect(v in ok, True, f"version {v} of the {kind} layer number {n}")

    r.expect(r.string(), "input_rgb_image_sized", "input layer")
    state: dict[str, torch.Tensor] = {"input_mean": torch.tensor([r.real() for _ in range(3)], dtype=torch.float32)}
    r.expect((r.integer(), r.integer()), (CHIP_SIZE, CHIP_SIZE), "input size")

    cin = 3
    for n, (kind, *args) in enumerate(layers):
        if kind in ("tag", "skip"):
            continue
        version = versions[n]
        if kind == "con":
            cout, k, stride, key = args
            r.expect(r.string(), "con_4", "conv layer")
            params = r.tensor().reshape(-1)
            pad = k // 2 if stride == 1 else 0
            r.expect(tuple(r.integer() for _ in range(7)), (cout, k, k, stride, stride, pad, pad), f"{key} geometry")
            r.expect(r.alias(), (cout, cin, k, k), f"{key} filter shape")
            r.expect(r.alias(), (1, cout, 1, 1), f"{key} bias shape")
            r.expect(params.size, cout * cin * k * k + cout, f"{key} parameter count")
            for _ in range(4):
                r.real()  # learning-rate and weight-decay multipliers
            state[key + ".weight"] = torch.from_numpy(params[: -cout].reshape(cout, cin, k, k).copy())
            state[key + ".bias"] = torch.from_numpy(params[-cout:].copy())
            cin = cout
        elif kind == "affine":
            (key,) = args
            name = r.string()
            if name != "affine_":  # dlib can also fold a stored bn_con into affine on load; not needed here
                raise ValueError(f"dlib .dat: expected an affine_ layer for {key}, found {name!r}")
            params = r.tensor().reshape(-1)
            r.expect((r.alias(), r.alias()), ((1, cin, 1, 1),) * 2, f"{key} shape")
            r.expect(r.integer(), 0, f"{key} mode (0 = per channel)")
            r.expect(params.size, 2 * cin, f"{key} parameter count")
            state[key + ".weight"] = torch.from_numpy(params[:cin].copy())  # gamma: scale
            state[key + ".bias"] = torch.from_numpy(params[cin:].copy())  # beta: shift
        elif kind in ("relu", "add_prev"):
            r.expect(r.string(), kind + "_", "layer")
        elif kind in ("max_pool", "avg_pool"):
            size, stride = args  # size 0: the whole map (avg_pool_everything)
            r.expect(r.string(), kind + "_2", "layer")
            pad = size // 2 if stride == 1 else 0
            r.expect(tuple(r.integer() for _ in range(6)), (size, size, stride, stride, pad, pad), f"{kind} geometry")
        elif kind == "fc":
            out, key = args
            r.expect(r.string(), "fc_2", "layer")
            r.expect((r.integer(), r.integer()), (out, cin), "fc size")
            w = r.tensor()
            r.expect(w.shape, (cin, out, 1, 1), "fc weight shape")
            r.expect(r.alias(), (cin, out, 1, 1), "fc weight alias")
            r.alias()  # bias alias: empty for fc_no_bias
            r.expect(r.integer(), 1, "fc bias mode (1 = no bias)")
            for _ in range(4):
                r.real()
            state[key + ".weight"] = torch.from_numpy(w[:, :, 0, 0].T.copy())  # dlib computes x @ W
        # What every add_layer writes after its layer: flags and (usually empty) work tensors.
        for _ in range(3):
            r.flag()
        for _ in range(2 if version == 1 else 3):  # x_grad, cached_output (+ params_grad or grad_final)
            r.tensor()
        if n == 0 and version == 3:
            r.integer()  # sample expansion factor of the input layer
    if r.pos != len(r.data):
        raise ValueError(f"dlib .dat: {len(r.data) - r.pos} unread bytes at the end")
    return state


def load_dlib_facenet(path: str | Path) -> DlibFaceResNet:
    """Build the module from a .dat or a .safetensors written from `convert_dlib_dat`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from humanaes.safetensors_io import load_safetensors

        state = load_safetensors(path)
    else:
        state = convert_dlib_dat(path)
    model = DlibFaceResNet()
    model.load_state_dict(state)
    return model.eval()


if __name__ == "__main__":  # python -m humanaes.models.mini.facenet MODEL.dat OUT.safetensors
    import sys

    from safetensors.torch import save_file

    meta = {"source": "dlib_face_recognition_resnet_model_v1.dat, CC0, face_recognition_models==0.3.0"}
    save_file(convert_dlib_dat(sys.argv[1]), sys.argv[2], metadata=meta)
