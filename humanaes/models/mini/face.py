"""Face detection with 5 landmarks (the MTCNN cascade) and similarity-aligned face chips.

The bundled model scores an aligned face chip next to the whole picture. The detector is the
three-network MTCNN cascade of Zhang et al. (2016): P-Net proposes windows over an image
pyramid, R-Net and O-Net refine them, O-Net also gives five landmarks (eyes, nose tip, mouth
corners). Its weights (about 2 MB) ship inside `humanaes-mini.safetensors` (keys
`face.detector.*`); they were taken from the MIT-licensed PyPI package `facenet-pytorch==2.6.0`
at training time (`recipes/train_bundled_face.py`). The module definitions and the cascade
below are our own.

Only faces of at least `min_face_fraction` of the picture's shorter side are searched for,
on a copy of the picture reduced to `detect_size` pixels on its shorter side, and only the best
proposals go on to the later networks: the bundled model scores portraits, and this keeps the
detector at about 15 ms per picture on one CPU core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

#: Where MTCNN's five landmarks (left eye, right eye as seen in the picture, nose tip, left and
#: right mouth corner) sit in a face chip, as fractions of its side. Measured: the median of
#: MTCNN's landmarks on 1937 chips cut by dlib's own aligner (`get_face_chip`, size 150,
#: padding 0.25) from MEBeauty photos, made left-right symmetric. Chips cut to this template
#: match the framing that dlib's face-recognition network was trained on.
CHIP_LANDMARKS = np.array(
    [[0.3200, 0.3000], [0.6800, 0.3000], [0.5000, 0.5140], [0.3472, 0.6885], [0.6528, 0.6885]],
    dtype=np.float64,
)


class PNet(nn.Module):
    """Proposal network: fully convolutional, a 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _max_pool(self.prelu1(self.conv1(x)), 2, 2)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


def _max_pool(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """max_pool2d with ceil_mode=True, in channels-last memory format (the detector's own layout:
    torch's CPU kernel is several times faster there than on channels-first maps)."""
    return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, stride, ceil_mode=True)


def _flatten_hwc(x: torch.Tensor) -> torch.Tensor:
    # The dense layers were trained on (width, height, channel)-ordered activations.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24x24 candidate windows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _max_pool(self.prelu1(self.conv1(x)), 3, 2)
        x = _max_pool(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu4(self.dense4(_flatten_hwc(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 windows: score, box offsets and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _max_pool(self.prelu1(self.conv1(x)), 3, 2)
        x = _max_pool(self.prelu2(self.conv2(x)), 3, 2)
        x = _max_pool(self.prelu3(self.conv3(x)), 2, 2)
        x = self.prelu5(self.dense5(_flatten_hwc(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the given picture
    score: float
    landmarks: np.ndarray  # (5, 2) x, y in pixels: eyes, nose, mouth corners


def _nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, by_min: bool = False) -> torch.Tensor:
    """Greedy non-maximum suppression; IoU, or intersection over the smaller box (`by_min`).
    The overlap matrix is computed once; the greedy pass only reads it."""
    order = scores.argsort(descending=True)
    b = boxes[order, :4]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    w = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    h = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    inter = w * h
    denom = torch.minimum(area[:, None], area[None, :]) if by_min else area[:, None] + area[None, :] - inter
    overlaps = (inter / denom > threshold).tolist()
    suppressed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        row = overlaps[i]
        for j in range(i + 1, len(order)):
            if row[j]:
                suppressed[j] = True
    return order[torch.tensor(keep, dtype=torch.long)]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre."""
    out = boxes.clone()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: torch.Tensor, offsets: torch.Tensor, plus_one: bool = True) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0] + (1 if plus_one else 0)
    h = boxes[:, 3] - boxes[:, 1] + (1 if plus_one else 0)
    out = boxes.clone()
    out[:, 0] += offsets[:, 0] * w
    out[:, 1] += offsets[:, 1] * h
    out[:, 2] += offsets[:, 2] * w
    out[:, 3] += offsets[:, 3] * h
    return out


def _windows(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop integer boxes (1-based inclusive, as the networks were trained) with zero padding
    outside the picture, each resized to size x size."""
    _, height, width = image.shape
    out = []
    for x1, y1, x2, y2 in boxes[:, :4].trunc().int().tolist():
        canvas = image.new_zeros((3, y2 - y1 + 1, x2 - x1 + 1))
        sx, sy = max(x1, 1), max(y1, 1)
        ex, ey = min(x2, width), min(y2, height)
        if ex >= sx and ey >= sy:
            canvas[:, sy - y1 : ey - y1 + 1, sx - x1 : ex - x1 + 1] = image[:, sy - 1 : ey, sx - 1 : ex]
        out.append(F.interpolate(canvas.unsqueeze(0), size=(size, size), mode="area"))
    return torch.cat(out)


class FaceDetector(nn.Module):
    """MTCNN: `detect(picture)` -> faces, most prominent (area x score) first."""

    def __init__(
        self,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_step: float = 0.709,
        min_face_fraction: float = 0.1,
        detect_size: int = 240,
        max_proposals: int = 24,
        max_refined: int = 4,
    ) -> None:
        super().__init__()
        # Only the best-scoring windows go on to the next network: a portrait has one or a few
        # faces, and R-Net/O-Net on hundreds of weak proposals would dominate the run time.
        self.max_proposals, self.max_refined = max_proposals, max_refined
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.thresholds, self.scale_step = thresholds, scale_step
        self.min_face_fraction, self.detect_size = min_face_fraction, detect_size
        self.eval()

    @staticmethod
    def _normalize(x: torch.Tensor) -> torch.Tensor:
        # channels-last: pooling and the small convolutions run several times faster this way
        return ((x - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def detect(self, picture: Image.Image) -> list[Face]:
        rgb = picture.convert("RGB") if picture.mode != "RGB" else picture
        factor = min(1.0, self.detect_size / min(rgb.size))
        if factor < 1.0:
            small = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))), Image.Resampling.BOX)
        else:
            small = rgb
        image = torch.from_numpy(np.asarray(small, dtype=np.float32).copy()).permute(2, 0, 1)
        faces = self._detect(image)
        inv = 1.0 / (small.width / rgb.width)
        return [Face(tuple(v * inv for v in f.box), f.score, f.landmarks * inv) for f in faces]  # type: ignore[arg-type]

    def _detect(self, image: torch.Tensor) -> list[Face]:
        _, height, width = image.shape
        min_face = max(12.0, self.min_face_fraction * min(height, width))
        scale = 12.0 / min_face
        shortest = min(height, width) * scale
        # 1. P-Net over the pyramid.
        proposals = []
        while shortest >= 12:
            level = F.interpolate(image.unsqueeze(0), size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            offsets, prob = self.pnet(self._normalize(level))
            ys, xs = torch.nonzero(prob[0] >= self.thresholds[0], as_tuple=True)
            if ys.numel():
                cells = torch.stack([xs, ys], 1).float()
                q1 = ((2 * cells + 1) / scale).floor()
                q2 = ((2 * cells + 12) / scale).floor()
                found = torch.cat([q1, q2, prob[0, ys, xs, None], offsets[0, :, ys, xs].T], 1)
                proposals.append(found[_nms(found[:, :4], found[:, 4], 0.5)])
            scale *= self.scale_step
            shortest *= self.scale_step
        if not proposals:
            return []
        boxes = torch.cat(proposals)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)][: self.max_proposals]
        boxes = _square(_regress(boxes[:, :4], boxes[:, 5:9], plus_one=False))
        # 2. R-Net.
        offsets, prob = self.rnet(self._normalize(_windows(image, boxes, 24)))
        keep = prob > self.thresholds[1]
        boxes, offsets, prob = boxes[keep], offsets[keep], prob[keep]
        if not len(boxes):
            return []
        pick = _nms(boxes, prob, 0.7)[: self.max_refined]
        boxes = _square(_regress(boxes[pick], offsets[pick]))
        # 3. O-Net: final boxes and landmarks.
        boxes = boxes.trunc()
        offsets, points, prob = self.onet(self._normalize(_windows(image, boxes, 48)))
        keep = prob > self.thresholds[2]
        boxes, offsets, points, prob = boxes[keep], offsets[keep], points[keep], prob[keep]
        if not len(boxes):
            return []
        w = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        h = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        marks = torch.stack([w * points[:, :5] + boxes[:, :1] - 1, h * points[:, 5:] + boxes[:, 1:2] - 1], 2)
        boxes = _regress(boxes, offsets)
        pick = _nms(boxes, prob, 0.7, by_min=True)
        faces = [Face(tuple(boxes[i].tolist()), float(prob[i]), marks[i].numpy().astype(np.float64)) for i in pick.tolist()]
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) * f.score)


def chip_template(zoom: float = 1.0) -> np.ndarray:
    """`CHIP_LANDMARKS` shrunk `zoom` times about the chip centre: a chip cut to this template
    shows `zoom` times more of the picture around the face (2.0: head, hair and shoulders)."""
    return 0.5 + (CHIP_LANDMARKS - 0.5) / zoom


def similarity_to(landmarks: np.ndarray, size: int, template: np.ndarray = CHIP_LANDMARKS) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) mapping the five
    landmarks onto the template scaled to `size`; a 2x3 matrix (Umeyama, no reflection)."""
    src = np.asarray(landmarks, dtype=np.float64)
    dst = np.asarray(template, dtype=np.float64) * size
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def aligned_crop(picture: Image.Image, landmarks: np.ndarray, size: int, zoom: float = 1.0) -> Image.Image:
    """The size x size face chip whose landmarks sit on `chip_template(zoom)` (bilinear; the
    picture is first reduced by an integer factor when the chip shrinks it more than 2x, against
    aliasing). Parts outside the picture are black, as in dlib's chips."""
    template = chip_template(zoom)
    matrix = similarity_to(landmarks, size, template)
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    reduce = max(1, int(1.0 / scale / 2.0)) if scale < 0.5 else 1
    if reduce > 1:
        picture = picture.reduce(reduce)
        matrix = similarity_to(np.asarray(landmarks) / reduce, size, template)
    # PIL wants the inverse map (output pixel -> input pixel).
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2].ravel().tolist()
    return picture.transform((size, size), Image.Transform.AFFINE, inv, resample=Image.Resampling.BILINEAR)


def face_chips(
    picture: Image.Image, detector: FaceDetector, size: int = 150, zooms: Sequence[float] = (1.0,)
) -> torch.Tensor | None:
    """The aligned chips (uint8, (len(zooms), 3, size, size)) of the most prominent face, one
    per zoom (see `chip_template`), or None when no face is found."""
    rgb = picture.convert("RGB") if picture.mode != "RGB" else picture
    faces = detector.detect(rgb)
    if not faces:
        return None
    chips = [np.asarray(aligned_crop(rgb, faces[0].landmarks, size, zoom), dtype=np.uint8) for zoom in zooms]
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).contiguous()


def face_chip(picture: Image.Image, detector: FaceDetector, size: int = 150) -> torch.Tensor | None:
    """The aligned chip (uint8, (3, size, size)) of the most prominent face, or None."""
    chips = face_chips(picture, detector, size)
    return None if chips is None else chips[0]
