"""The declarative build spec of `humanaes data build` (a YAML file), parsed into typed settings.

Example::

    seed: 0                      # seed of the per-source train/test split
    test_ratio: 0.1              # share of each source put in test (the release: 90/10)
    sources:
      - name: MEBeauty
        table: mebeauty.csv      # CSV/TSV with a header row, or JSONL; relative to this file
        images: photos/          # folder the image paths are relative to (default: the table's folder)
        image_column: image
        score_column: score
        range: [1, 10]           # the raw score scale, or "min-max" (over the source's rows)
        licence: non-commercial research only
    filters:                     # every filter can be switched off with `false`
      decodable: true
      min_resolution: {min_side: 224}
      human: {face: true, person: hog}
      max_faces: null            # a number drops images with more faces
      dedup: {max_distance: 6}

Every key is checked: an unknown key, a wrong type or a missing value is a one-line ConfigError
naming the key and the spec file, before anything is read or written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from humanaes.config_keys import check_known_keys
from humanaes.errors import ConfigError

#: The subset folder every build writes (overall scores only, as HumanBeauty-58K).
BUILD_SUBSET = "HumanBeauty-58K"
PERSON_DETECTORS = ("hog", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SourceSpec:
    """One public data set: a table of image paths and raw scores."""

    name: str
    table: Path
    images: Path
    image_column: str
    score_column: str
    raw_range: tuple[float, float] | None  # None = min-max over the source's rows
    licence: str | None = None


@dataclass(frozen=True)
class FaceSettings:
    """MTCNN settings of the human filter (see `humanaes.data.build.probe`)."""

    detect_size: int = 240  # the detector runs on a copy with this shorter side
    # smallest face searched for, x the shorter side; smaller faces (distant figures) are left
    # to the person detector: each halving of this roughly doubles the detector's time
    min_face_fraction: float = 0.1
    min_score: float = 0.9  # O-Net probability a face needs to count


@dataclass(frozen=True)
class HumanFilter:
    face: bool = True
    person: str = "hog"  # for pictures without a face; "none" = faces only
    faces: FaceSettings = field(default_factory=FaceSettings)
    person_min_weight: float = 0.25  # SVM margin a HOG person window needs to count (see docs/data-build.md)


@dataclass(frozen=True)
class Filters:
    decodable: bool = True
    min_side: int | None = 0  # None or 0: off
    min_pixels: int | None = 0
    human: HumanFilter | None = field(default_factory=HumanFilter)
    max_faces: int | None = None
    dedup_distance: int | None = 6  # Hamming distance of 64-bit perceptual hashes; None: off

    @property
    def needs_decode(self) -> bool:
        return bool(self.decodable or self.min_side or self.min_pixels or self.human or self.max_faces or self.dedup_distance is not None)

    @property
    def needs_faces(self) -> bool:
        return bool((self.human is not None and self.human.face) or self.max_faces is not None)


@dataclass(frozen=True)
class BuildSpec:
    path: Path
    sources: tuple[SourceSpec, ...]
    filters: Filters
    seed: int = 0
    test_ratio: float = 0.1

    def canonical(self) -> dict[str, Any]:
        """The spec's content as plain JSON data (paths absolute), for fingerprints and reports."""
        data = asdict(self)
        data.pop("path")
        for source in data["sources"]:
            source["table"], source["images"] = str(source["table"]), str(source["images"])
            source["raw_range"] = list(source["raw_range"]) if source["raw_range"] else "min-max"
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()


def require_extra(module: str, purpose: str) -> Any:
    """Import a module of the `build` extra, or say how to install it (one line, no traceback)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the {module!r} module: pip install 'humanaes[build]'") from None


def read_text_file(path: Path, what: str, error: type[Exception], *, missing_hint: str) -> str:
    """The UTF-8 text of `path` (a leading BOM dropped), or `error` with one line saying why not."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; {missing_hint}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text; re-save it as UTF-8") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path} ({exc.strerror or exc})") from None


class _Reader:
    """Typed access to one mapping of the YAML file, with errors naming the key path."""

    def __init__(self, data: Any, where: str, spec: Path):
        self.spec, self.where = spec, where
        if not isinstance(data, dict):
            self.fail(f"must be a mapping of keys, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.known: set[str] = set()  # every key (and alias) this section was asked for

    def fail(self, message: str) -> None:
        raise ConfigError(f"{self.spec}: {self.where}: {message}")

    def get(self, key: str, default: Any = None, *, aliases: tuple[str, ...] = ()) -> Any:
        self.known.update((key, *aliases))
        given = [name for name in (key, *aliases) if name in self.data]
        if len(given) > 1:
            self.fail(f"{' and '.join(map(repr, given))} are the same setting; give only one")
        return self.data[given[0]] if given else default

    def text(self, key: str, default: str | None = None, *, aliases: tuple[str, ...] = ()) -> str | None:
        value = self.get(key, default, aliases=aliases)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{key} must be a non-empty string, got {value!r}")
        return value.strip()

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            self.fail(f"{key} is required")
        return value  # type: ignore[return-value]

    def number(self, key: str, default: float | None, *, integer: bool = False, low: float | None = None,
               high: float | None = None) -> Any:
        value = self.get(key, default)
        if value is None:
            return None
        kind = "a whole number" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
            self.fail(f"{key} must be {kind}, got {value!r}")
        if not math.isfinite(float(value)):
            self.fail(f"{key} must be finite, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            self.fail(f"{key} must be {bounds}, got {value!r}")
        return int(value) if integer else float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(f"{key} must be true or false, got {value!r}")
        return value

    def section(self, key: str, default_on: bool = True) -> "_Reader | None":
        """A switchable filter: `false`/`null` = off, `true` = defaults, a mapping = settings."""
        value = self.get(key, default_on)
        if value is False or value is None:
            return None
        return _Reader({} if value is True else value, f"{self.where}.{key}", self.spec)

    def done(self) -> None:
        """Refuse the keys of this section that nothing asked for (call after reading them all)."""
        try:
            check_known_keys(self.data, self.known, self.where)
        except ConfigError as exc:
            raise ConfigError(f"{self.spec}: {exc}") from None


def _source(data: Any, index: int, base: Path, spec: Path) -> SourceSpec:
    r = _Reader(data, f"sources[{index}]", spec)
    name = r.required_text("name")
    if not _NAME.match(name):
        r.fail(f"name {name!r} may only hold letters, digits, '.', '_' and '-' (it names files and label rows)")
    r.where = f"source {name!r}"
    table = base / r.required_text("table")
    images_text = r.text("images", aliases=("image_root",))
    images = base / images_text if images_text else table.parent
    raw = r.get("range", aliases=("raw_range",))
    raw_range: tuple[float, float] | None
    if raw is None:
        r.fail('range is required: the raw score scale as [MIN, MAX], or "min-max" to use the lowest and highest score of the source')
    if isinstance(raw, str) and raw.strip().lower().replace("_", "-") in ("min-max", "minmax"):
        raw_range = None
    elif (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
          and all(math.isfinite(v) for v in raw) and raw[0] < raw[1]):
        raw_range = (float(raw[0]), float(raw[1]))
    else:
        r.fail(f'range must be [MIN, MAX] with MIN < MAX, or "min-max", got {raw!r}')
    source = SourceSpec(
        name=name,
        table=Path(os.path.abspath(table)),
        images=Path(os.path.abspath(images)),
        image_column=r.text("image_column", "image"),  # type: ignore[arg-type]
        score_column=r.text("score_column", "score"),  # type: ignore[arg-type]
        raw_range=raw_range,
        licence=r.text("licence", aliases=("license",)),
    )
    r.done()
    return source


def _filters(data: Any, spec: Path) -> Filters:
    r = _Reader({} if data is None else data, "filters", spec)
    decodable = r.flag("decodable", True)
    resolution = r.section("min_resolution", default_on=False)
    min_side = min_pixels = 0
    if resolution is not None:
        min_side = resolution.number("min_side", 0, integer=True, low=0)
        min_pixels = resolution.number("min_pixels", 0, integer=True, low=0)
        resolution.done()
    human_r = r.section("human")
    human: HumanFilter | None = None
    if human_r is not None:
        face = human_r.flag("face", True)
        person = (human_r.text("person", "hog") or "hog").lower()
        if person not in PERSON_DETECTORS:
            human_r.fail(f"person must be one of {', '.join(PERSON_DETECTORS)}, got {person!r}")
        if not face and person == "none":
            human_r.fail("face and person are both off; switch the whole filter off with `human: false` instead")
        d = FaceSettings()
        faces = FaceSettings(
            detect_size=human_r.number("face_detect_size", d.detect_size, integer=True, low=48),
            min_face_fraction=human_r.number("min_face_fraction", d.min_face_fraction, low=0.01, high=1.0),
            min_score=human_r.number("min_face_score", d.min_score, low=0.0, high=1.0),
        )
        weight = human_r.number("person_min_weight", HumanFilter().person_min_weight, low=-10.0, high=10.0)
        human_r.done()
        human = HumanFilter(face=face, person=person, faces=faces, person_min_weight=weight)
    max_faces = r.number("max_faces", None, integer=True, low=1)
    dedup = r.section("dedup")
    distance = None
    if dedup is not None:
        distance = dedup.number("max_distance", 6, integer=True, low=0, high=32)
        dedup.done()
    r.done()
    return Filters(decodable=decodable, min_side=min_side, min_pixels=min_pixels, human=human, max_faces=max_faces,
                   dedup_distance=distance)


def load_spec(path: str | os.PathLike[str]) -> BuildSpec:
    """Read and check a build spec; relative paths in it are relative to the spec's folder."""
    yaml = require_extra("yaml", "reading the build spec")
    path = Path(path)
    text = read_text_file(path, "build spec", ConfigError, missing_hint="check the path")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"build spec {path} is not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None
    r = _Reader(data, "top level", path)
    base = path.resolve().parent
    sources_data = r.get("sources")
    if not isinstance(sources_data, list) or not sources_data:
        r.fail("sources must be a non-empty list of sources (name, table, range ...)")
    sources = tuple(_source(item, i, base, path) for i, item in enumerate(sources_data))
    names = [s.name for s in sources]
    lowered = [n.lower() for n in names]
    twice = sorted({n for n in names if lowered.count(n.lower()) > 1})
    if twice:
        r.fail(f"source name(s) {', '.join(map(repr, twice))} used more than once (names are compared ignoring case)")
    filters = _filters(r.get("filters"), path)
    spec = BuildSpec(
        path=path,
        sources=sources,
        filters=filters,
        seed=r.number("seed", 0, integer=True),
        test_ratio=r.number("test_ratio", 0.1, low=0.0, high=1.0),
    )
    if not 0.0 < spec.test_ratio < 1.0:
        r.fail(f"test_ratio must be between 0 and 1 (exclusive), got {spec.test_ratio}")
    r.done()
    return spec
