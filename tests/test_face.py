"""The bundled model's face branch: MTCNN port, alignment, dlib face-network port, head, scorer."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from humanaes.errors import CheckpointError, ConfigError
from humanaes.models.mini import load_bundled
from humanaes.models.mini.face import (
    CHIP_LANDMARKS,
    _max_pool,
    aligned_crop,
    chip_template,
    face_chip,
    face_chips,
    similarity_to,
)
from humanaes.models.mini.facenet import LAST_MAP_DIM, POOLED_LEVELS_DIM, DlibFaceResNet, load_dlib_facenet
from humanaes.models.mini.modeling import FaceBranch, FaceConfig
from humanaes.training.trainer import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the dlib .dat reader is a training-time tool in recipes/, outside the package
from recipes.dlib_dat import convert_dlib_dat  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def scorer():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_bundled()
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape,kernel,stride", [((2, 10, 78, 105), 2, 2), ((4, 28, 22, 22), 3, 2), ((1, 3, 7, 8), 3, 2), ((3, 64, 9, 9), 2, 2)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_max_pool_matches_torch_ceil_mode(shape, kernel, stride, layout):
    x = torch.randn(shape)
    expected = F.max_pool2d(x, kernel, stride, ceil_mode=True)
    assert torch.equal(_max_pool(x.contiguous(memory_format=layout), kernel, stride), expected)


def test_similarity_recovers_a_known_transform():
    angle, scale, shift = math.radians(25), 2.7, np.array([40.0, -12.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    target = CHIP_LANDMARKS * 150
    landmarks = (target - shift) @ np.linalg.inv(scale * rot).T  # picture points that map onto the template
    matrix = similarity_to(landmarks, 150)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - target).max() < 1e-9


@pytest.mark.parametrize("zoom", [1.0, 2.0])
def test_aligned_crop_moves_a_marked_point_onto_the_template(zoom):
    picture = Image.new("RGB", (400, 300), (0, 0, 0))
    offset = np.array([150.0, 60.0])
    marks = CHIP_LANDMARKS * 120 + offset  # an upright face, 120 px chip scale
    x, y = np.round(marks[2]).astype(int)  # paint a 5x5 square centred on the nose tip
    picture.paste((255, 255, 255), (x - 2, y - 2, x + 3, y + 3))
    chip = np.asarray(aligned_crop(picture, marks, 150, zoom)).sum(-1).astype(float)
    rows, cols = np.mgrid[: chip.shape[0], : chip.shape[1]]
    cy, cx = (rows * chip).sum() / chip.sum(), (cols * chip).sum() / chip.sum()  # centroid
    # the template point, moved by the rounding of the painted square, in chip pixels: the
    # picture -> chip scale is 150 / 120 / zoom about the centre of the template
    template = chip_template(zoom)
    ex, ey = template[2] * 150 + (np.array([x, y]) - marks[2]) * 150 / 120 / zoom
    assert abs(cx - ex) <= 1.5 and abs(cy - ey) <= 1.5


def test_chip_template_zooms_out_about_the_centre():
    assert np.array_equal(chip_template(1.0), CHIP_LANDMARKS)
    wide = chip_template(2.0)
    assert np.allclose(wide - 0.5, (CHIP_LANDMARKS - 0.5) / 2)
    eye_gap = lambda t: np.linalg.norm(t[1] - t[0])  # noqa: E731
    assert eye_gap(wide) == pytest.approx(eye_gap(CHIP_LANDMARKS) / 2)


def test_dlib_face_network_matches_dlib_on_a_recorded_chip(scorer):
    """Golden output of dlib itself (tests/data, recorded with dlib 20.0.1). The packaged
    weights are stored in float16, so agreement is to about 1e-3, far inside dlib's
    same-person distance of 0.6; the float32 port matches to 4e-7 (recipes/check_dlib_port.py)."""
    chip = torch.from_numpy(np.asarray(Image.open(DATA / "grace_hopper_dlib_chip.png").convert("RGB")).copy())
    chip = chip.permute(2, 0, 1).float().unsqueeze(0)
    expected = torch.tensor(json.loads((DATA / "grace_hopper_dlib_descriptor.json").read_text())["descriptor"])
    net = scorer.face.facenet
    with torch.no_grad():
        got = net(chip)[0]
    assert torch.linalg.norm(got - expected) < 0.02
    assert (got - expected).abs().max() < 5e-3


def test_converter_rejects_other_files(tmp_path):
    bad = tmp_path / "not_dlib.dat"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ValueError):
        convert_dlib_dat(bad)
    # the runtime never parses .dat files: it points to the training-time converter instead
    with pytest.raises(CheckpointError, match="recipes/dlib_dat.py"):
        load_dlib_facenet(bad)


def test_detector_finds_the_example_faces_with_sane_landmarks(scorer):
    detector = scorer.face.detector
    for name in ("grace_hopper.jpg", "astronaut.png"):
        picture = Image.open(EXAMPLES / name).convert("RGB")
        faces = detector.detect(picture)
        assert faces, name
        face = faces[0]
        x1, y1, x2, y2 = face.box
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
        assert all(x1 - 5 <= px <= x2 + 5 and y1 - 5 <= py <= y2 + 5 for px, py in face.landmarks), name
        assert lex < nx < rex and lmx < rmx, name  # left-right order
        assert max(ley, rey) < ny < min(lmy, rmy), name  # eyes above the nose above the mouth
        assert face.score > 0.9
        chip = face_chip(picture, detector)
        assert chip is not None and chip.shape == (3, 150, 150) and chip.dtype == torch.uint8
        chips = face_chips(picture, detector, 150, (1.0, 2.0))
        assert chips is not None and chips.shape == (2, 3, 150, 150)
        assert torch.equal(chips[0], chip)
        # the wide chip holds the face chip, shrunk 2x, at its centre (300 px chips: whole pixels)
        big = face_chips(picture, detector, 300, (1.0, 2.0)).float()
        inner = F.avg_pool2d(big[0][None], 2)[0]
        error = lambda dy, dx: float((big[1][:, 75 + dy : 225 + dy, 75 + dx : 225 + dx] - inner).abs().mean())  # noqa: E731
        assert error(0, 0) < 0.5 * min(error(6, 0), error(0, 6), error(-6, -6)), name


def test_scorer_mixes_face_and_whole_image_scores(scorer):
    results = scorer.score([EXAMPLES / "grace_hopper.jpg", Image.new("RGB", (320, 240), (90, 140, 200))], batch_size=2)
    with_face, without = results
    assert with_face.ok and without.ok
    assert with_face.extra["face_found"] is True
    # person_found is the documented top-level field: the detector's verdict, both ways
    assert with_face.person_found is True and without.person_found is False
    w = scorer.face.config.weight
    mixed = (1 - w) * with_face.extra["whole_image_score"] + w * with_face.extra["face_score"]
    assert with_face.overall == pytest.approx(mixed, abs=1e-6)
    assert without.extra == {"face_found": False}  # whole-image score only, nothing invented
    alone = scorer.score(Image.new("RGB", (320, 240), (90, 140, 200)), use_face=False)[0]
    assert without.overall == pytest.approx(alone.overall, abs=1e-6)


def test_face_head_trains_with_the_project_trainer(tmp_path):
    torch.manual_seed(0)
    branch = FaceBranch(FaceConfig(hidden=16, dropout=0.0))
    for p in branch.frozen_parameters():
        p.requires_grad_(False)
    features = torch.randn(256, POOLED_LEVELS_DIM)
    score = torch.sigmoid(features[:, :8].sum(1) / 3)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(score)

        def __getitem__(self, i: int) -> int:
            return i

    def collate(idx: list[int]) -> dict[str, torch.Tensor]:
        return {"features": features[idx], "score": score[idx]}

    before = float(branch.compute_loss(collate(list(range(256))))["mse"])
    config = TrainerConfig(output_dir=str(tmp_path), epochs=30, batch_size=32, lr=3e-3, device="cpu", save_every_epochs=None,
                           eval_every_epochs=None, progress_bar=False, tensorboard=False)
    Trainer(branch, config, Rows(), collate_fn=collate).fit()
    branch.eval()
    after = float(branch.compute_loss(collate(list(range(256))))["mse"])
    assert after < before / 3
    assert all(not p.requires_grad for p in branch.frozen_parameters())


def test_face_config_is_checked():
    with pytest.raises(ConfigError, match="unknown face config key"):
        FaceConfig.from_dict({"hiden": 3})
    with pytest.raises(ConfigError, match="weight"):
        FaceConfig.from_dict({"weight": 1.5})


def test_face_features_with_map_and_context_chip():
    torch.manual_seed(0)
    config = FaceConfig.from_dict({"last_map": True, "context_zoom": 2.0})
    assert config.zooms == (1.0, 2.0)
    assert config.feature_dim == 2 * POOLED_LEVELS_DIM + LAST_MAP_DIM
    branch = FaceBranch(config).eval()
    chips = (torch.rand(3, 2, 3, 150, 150) * 255).to(torch.uint8)
    got = branch.chip_features(chips)
    assert got.shape == (3, config.feature_dim)
    net, x = branch.facenet, chips.float()
    with torch.no_grad():
        face = (net.pooled_levels(x[:, 0], True) + net.pooled_levels(x[:, 0].flip(-1), True)) / 2
        wide = (net.pooled_levels(x[:, 1]) + net.pooled_levels(x[:, 1].flip(-1))) / 2
    assert torch.allclose(got, torch.cat([face, wide], 1), atol=1e-5)
    assert branch.predict(chips).shape == (3,)
    with pytest.raises(ValueError, match="2 chips per face"):
        branch.chip_features(chips[:, :1])
    with pytest.raises(ConfigError, match="context_zoom"):
        FaceConfig.from_dict({"context_zoom": 0.5})
    # a face config written before these options still loads, as the face chip alone
    old = FaceConfig.from_dict({"hidden": 256, "dropout": 0.5, "tta_flip": True, "weight": 0.5})
    assert old.zooms == (1.0,) and old.feature_dim == POOLED_LEVELS_DIM


def test_random_init_face_network_shapes():
    net = DlibFaceResNet().eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 150, 150) * 255
        assert net(x).shape == (2, 128)
        assert net.pooled_levels(x).shape == (2, POOLED_LEVELS_DIM)
        with_map = net.pooled_levels(x, last_map=True)
        assert with_map.shape == (2, POOLED_LEVELS_DIM + LAST_MAP_DIM)
        assert torch.equal(with_map[:, :POOLED_LEVELS_DIM], net.pooled_levels(x))
