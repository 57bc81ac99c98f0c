"""Per-image facts the filters decide on: decode, size, faces, a person, content and perceptual hashes.

`Prober.probe(path)` measures one image and returns a plain dict (JSON-ready, so the build can
cache it in its work folder and resume). It never raises for a bad image: the cause goes into
`error`. The detectors:

- **Faces**: the MTCNN cascade that ships with the bundled model (`humanaes.models.mini.face`),
  weights read from `humanaes-mini.safetensors`; nothing is downloaded.
- **A person without a visible face**: OpenCV's HOG + linear SVM people detector (Dalal and
  Triggs, 2005), whose coefficients are compiled into `opencv-python-headless` 4.x, so it works
  offline. It only runs on pictures where no face was found. See docs/data-build.md for why it
  was chosen and its measured precision and recall.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humanaes.data.build.spec import Filters, require_extra
from humanaes.errors import ConfigError, ImageLoadError

#: HOG runs on a copy whose longer side is at most this (people smaller than the 64x128 window
#: at that size are not found; larger sizes cost time quadratically).
HOG_MAX_SIDE = 640
#: Faces counted for `max_faces` are capped by how many candidates the cascade refines.
MAX_FACE_CANDIDATES = 16


def hash_bits(hex_hash: str) -> int:
    return int(hex_hash, 16)


@dataclass
class ProbeSettings:
    """What to measure; derived from the spec's filters. Its `key()` names the cache file, so a
    change of detector settings never reuses facts measured with other settings."""

    decode: bool
    faces: bool
    face_detect_size: int
    face_min_fraction: float
    face_min_score: float
    person: str  # "hog" or "none"
    perceptual_hash: bool

    @classmethod
    def from_filters(cls, filters: Filters) -> "ProbeSettings":
        human = filters.human
        faces = filters.needs_faces
        from humanaes.data.build.spec import FaceSettings

        face = human.faces if human is not None else FaceSettings()
        return cls(
            decode=filters.needs_decode,
            faces=faces,
            face_detect_size=face.detect_size,
            face_min_fraction=face.min_face_fraction,
            face_min_score=face.min_score,
            person=human.person if human is not None else "none",
            perceptual_hash=filters.dedup_distance is not None,
        )

    def key(self) -> str:
        text = repr(sorted(vars(self).items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_face_detector(detect_size: int, min_face_fraction: float) -> Any:
    """The bundled MTCNN detector with its packaged weights (float32, eval mode)."""
    from importlib import resources

    import torch
    from safetensors import safe_open

    from humanaes.models.mini.face import FaceDetector
    from humanaes.models.mini.scorer import WEIGHTS_FILE

    detector = FaceDetector(
        detect_size=detect_size,
        min_face_fraction=min_face_fraction,
        max_proposals=3 * MAX_FACE_CANDIDATES,
        max_refined=MAX_FACE_CANDIDATES,
    )
    prefix = "face.detector."
    with resources.as_file(resources.files("humanaes.models.mini") / WEIGHTS_FILE) as weights:
        with safe_open(str(weights), "pt") as handle:
            state = {k[len(prefix):]: handle.get_tensor(k).to(torch.float32) for k in handle.keys() if k.startswith(prefix)}
    if not state:
        raise ConfigError(f"the packaged {WEIGHTS_FILE} holds no face detector weights; reinstall humanaes")
    detector.load_state_dict(state)
    return detector.eval()


def check_dependencies(settings: ProbeSettings) -> None:
    """ConfigError (one line, how to install) when a package the settings need is missing."""
    if settings.person == "hog":
        PersonDetector()
    if settings.perceptual_hash:
        require_extra("imagehash", "the near-duplicate filter")


class PersonDetector:
    """OpenCV's default HOG people detector; `best_weight(picture)` -> the largest SVM margin of
    its hits (None: no window fired). The build compares it with `person_min_weight` later, so
    changing that threshold needs no new detection."""

    def __init__(self) -> None:
        try:
            import cv2
        except ImportError:
            raise ConfigError(
                "the person detector needs OpenCV: pip install 'humanaes[build]' (opencv-python-headless 4.x), "
                "or set filters.human.person: none in the spec"
            ) from None
        if not hasattr(cv2, "HOGDescriptor") or not hasattr(cv2.HOGDescriptor, "getDefaultPeopleDetector"):
            raise ConfigError(
                f"OpenCV {cv2.__version__} has no HOG people detector (removed in 5.0); install opencv-python-headless<5 "
                "or set filters.human.person: none in the spec"
            )
        cv2.setNumThreads(1)  # one image per process; the build runs one process per core
        self._cv2 = cv2
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor.getDefaultPeopleDetector())

    def best_weight(self, picture: Any) -> float | None:
        import numpy as np

        rgb = picture
        factor = min(1.0, HOG_MAX_SIDE / max(rgb.size))
        if factor < 1.0:
            rgb = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))))
        gray = np.asarray(rgb.convert("L"))
        if gray.shape[0] < 128 or gray.shape[1] < 64:  # smaller than one detection window
            return None
        _, found = self.hog.detectMultiScale(gray, winStride=(8, 8), padding=(16, 16), scale=1.05)
        margins = np.asarray(found, dtype=np.float64).reshape(-1)
        return round(float(margins.max()), 4) if margins.size else None


class Prober:
    """Measures images; built once per worker process (the detectors load once)."""

    def __init__(self, settings: ProbeSettings):
        self.settings = settings
        self.faces = load_face_detector(settings.face_detect_size, settings.face_min_fraction) if settings.faces else None
        self.person = PersonDetector() if settings.person == "hog" else None
        # imported here, in the process that hashes, so a missing package fails before any work
        self._imagehash = require_extra("imagehash", "the near-duplicate filter") if settings.perceptual_hash else None

    def probe(self, path: Path) -> dict[str, Any]:
        from humanaes.io.images import load_image

        facts: dict[str, Any] = {"sha256": None, "error": None, "width": None, "height": None,
                                 "faces": None, "person_weight": None, "phash": None}
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            facts["error"] = "missing"
            return facts
        except OSError as exc:
            facts["error"] = f"cannot read ({exc.strerror or exc})"
            return facts
        facts["sha256"] = hashlib.sha256(data).hexdigest()
        if not self.settings.decode:
            return facts
        try:
            picture = load_image(data, name=str(path))
        except ImageLoadError as exc:
            facts["error"] = exc.cause
            return facts
        facts["width"], facts["height"] = picture.size
        if self.faces is not None:
            found = self.faces.detect(picture)
            facts["faces"] = sum(1 for f in found if f.score >= self.settings.face_min_score)
        if self.person is not None and not facts["faces"]:
            facts["person_weight"] = self.person.best_weight(picture)
        if self.settings.perceptual_hash:
            facts["phash"] = str(self._imagehash.phash(picture))
        return facts

