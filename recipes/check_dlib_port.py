"""Check humanaes.models.mini.facenet (our port of dlib's face-recognition ResNet) against dlib itself.

Two steps, in two environments, because dlib is not a dependency of this project:

1. With dlib installed (any Python with dlib, numpy and Pillow; torch is not needed):
       python recipes/check_dlib_port.py --make-ref [--ref /tmp/dlibref] [--count 32]
   detects faces (dlib's HOG detector), finds dlib's 5 landmarks, cuts the chips with
   dlib.get_face_chip(img, shape, size=150, padding=0.25) and writes
       REF/chips.npy         (N, 150, 150, 3) uint8
       REF/descriptors.npy   (N, 128) float64: rec.compute_face_descriptor(chip)
       REF/descriptors_batch.npy, REF/landmarks5.npy, REF/names.json
2. In the project environment:
       python recipes/check_dlib_port.py [--dat MODEL.dat | --weights W.safetensors] [--save OUT.safetensors]
   converts the .dat with our own parser, runs the chips through DlibFaceResNet and compares.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

MODELS = "/tmp/pipdl/face_recognition_models-0.3.0/face_recognition_models/models/"
DAT = MODELS + "dlib_face_recognition_resnet_model_v1.dat"
IMAGES = ["examples/grace_hopper.jpg", "/work/shared/data/HumanBeauty/HumanBeauty-58K/images/*.jpg"]


def make_reference(ref: Path, count: int) -> None:
    import dlib
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(MODELS + "shape_predictor_5_face_landmarks.dat")
    rec = dlib.face_recognition_model_v1(DAT)
    paths = [IMAGES[0]] + sorted(glob.glob(IMAGES[1]))[::37]  # a spread over the folder, not one source
    chips, descs, lms, names = [], [], [], []
    for tried, p in enumerate(paths, 1):
        img = np.asarray(Image.open(p).convert("RGB"))
        dets = detector(img, 1)
        if not dets:
            continue
        shape = landmarks(img, max(dets, key=lambda r: r.area()))
        chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
        chips.append(chip)
        descs.append(np.array(rec.compute_face_descriptor(chip)))
        lms.append([(shape.part(i).x, shape.part(i).y) for i in range(5)])
        names.append(str(Path(p).resolve()))
        if len(chips) == count:
            break
    ref.mkdir(parents=True, exist_ok=True)
    np.save(ref / "chips.npy", np.stack(chips))
    np.save(ref / "descriptors.npy", np.stack(descs))
    np.save(ref / "descriptors_batch.npy", np.array([np.array(v) for v in rec.compute_face_descriptor(chips)]))
    np.save(ref / "landmarks5.npy", np.array(lms, dtype=np.int64))
    (ref / "names.json").write_text(json.dumps(names, indent=0))
    print(f"{len(chips)} faces from {tried} pictures -> {ref}")


def check(args: argparse.Namespace) -> bool:
    import torch
    from dlib_dat import convert_dlib_dat

    from humanaes.models.mini.facenet import DlibFaceResNet

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    if args.weights:
        from safetensors.torch import load_file

        state = load_file(args.weights)
    else:
        state = convert_dlib_dat(args.dat)
    n_values = sum(v.numel() for v in state.values())
    print(f"weights: {len(state)} tensors, {n_values:,} values, {time.perf_counter() - t:.2f}s")
    if args.save:
        from safetensors.torch import save_file

        save_file(state, args.save)
        print("saved", args.save)
    model = DlibFaceResNet()
    model.load_state_dict(state)
    model.eval()

    ref = Path(args.ref)
    chips = torch.from_numpy(np.load(ref / "chips.npy")).permute(0, 3, 1, 2).float()
    want = np.load(ref / "descriptors.npy")
    with torch.inference_mode():
        got = torch.cat([model(chips[i : i + 16]) for i in range(0, len(chips), 16)]).double().numpy()
        one = model(chips[:1]).double().numpy()  # a batch of one must give the same answer
    diff = np.abs(got - want)
    pairwise = lambda d: np.linalg.norm(d[:, None] - d[None], axis=-1)  # noqa: E731
    dist_err = np.abs(pairwise(got) - pairwise(want))
    norms = np.linalg.norm(want, axis=1)
    print(f"{len(chips)} chips: max |diff| {diff.max():.3g}, mean |diff| {diff.mean():.3g}, "
          f"max rel {diff.max() / np.abs(want).max():.3g}; batch-1 vs batch-16 {np.abs(one - got[:1]).max():.3g}")
    print(f"pairwise distance error: max {dist_err.max():.3g} (dlib's same-person threshold is 0.6)")
    print(f"descriptor norms: {norms.min():.3f}..{norms.max():.3f} (dlib does not normalise)")
    if (ref / "descriptors_batch.npy").exists():
        print(f"dlib single vs dlib batch call: {np.abs(np.load(ref / 'descriptors_batch.npy') - want).max():.3g}")
    ok = bool(diff.max() < args.tol)
    print("PASS" if ok else "FAIL", f"(tolerance {args.tol:g})")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-ref", action="store_true", help="step 1: write the dlib reference (needs dlib)")
    ap.add_argument("--count", type=int, default=32, help="faces for --make-ref")
    ap.add_argument("--ref", default="/tmp/dlibref")
    ap.add_argument("--dat", default=DAT)
    ap.add_argument("--weights", help="a .safetensors from convert_dlib_dat instead of --dat")
    ap.add_argument("--save", help="write the converted float32 state dict here")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.make_ref:
        make_reference(Path(args.ref), args.count)
        return 0
    return 0 if check(args) else 1


if __name__ == "__main__":
    sys.exit(main())
