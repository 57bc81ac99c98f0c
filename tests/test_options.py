"""Typed scoring options: declared per scorer, validated at the call, published as plain data."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from PIL import Image

import humanaes
from humanaes.errors import HumanAesError
from humanaes.io.images import DEFAULT_MAX_PIXELS
from humanaes.models.expert.scorer import ExpertOptions, HumanAesScorer
from humanaes.models.mini import BundledScorer
from humanaes.models.mini.scorer import MiniOptions
from humanaes.options import ScoreOptions, describe_options, model_options, option, options_json_schema, parse_options
from humanaes.schema import ScoreResult
from humanaes.scorer import BaseScorer


class SizeScorer(BaseScorer):
    """A tiny real model: the score is the decoded image's aspect (width / (width + height)),
    so how an image was decoded (EXIF rotation) shows in the score."""

    name = "size-test"
    supported_modes = ("fast",)

    def __init__(self) -> None:
        self.seen_options: list[dict[str, Any]] = []

    def prepare(self, image: Image.Image, **options: Any) -> tuple[int, int]:
        return image.size

    def score_prepared(self, prepared: list[Any], names: list[str], mode: str, **options: Any) -> list[ScoreResult]:
        self.seen_options.append(dict(options))
        return [ScoreResult(image=n).finalize(w / (w + h)) for (w, h), n in zip(prepared, names)]


def _rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90 degrees' (orientation 6): 20x40 when applied."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (120, 80, 60)).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


# -- the declaration as plain data ----------------------------------------------------------------


def test_bundled_options_published_as_plain_data() -> None:
    rows = describe_options(MiniOptions)
    assert [r["name"] for r in rows] == ["apply_exif", "max_pixels", "use_face", "tta_flip"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["use_face"] == {
        "name": "use_face", "type": "boolean", "nullable": False, "default": True, "help": by_name["use_face"]["help"],
    }
    assert by_name["tta_flip"]["nullable"] is True and by_name["tta_flip"]["default"] is None
    assert by_name["max_pixels"] == {**by_name["max_pixels"], "type": "integer", "minimum": 1, "default": DEFAULT_MAX_PIXELS}
    assert all(r["help"] for r in rows)
    json.dumps(rows)  # plain data
    # a service client may not raise the decompression-bomb limit
    assert [r["name"] for r in describe_options(MiniOptions, client_only=True)] == ["apply_exif", "use_face", "tta_flip"]


def test_expert_options_and_json_schema() -> None:
    schema = options_json_schema(ExpertOptions, client_only=True)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["max_tiles"] == {
        "type": ["integer", "null"], "default": None, "minimum": 1, "maximum": 64,
        "description": schema["properties"]["max_tiles"]["description"],
    }
    assert schema["properties"]["max_new_tokens"]["type"] == "integer"
    assert schema["properties"]["max_new_tokens"]["default"] == 200
    assert set(schema["properties"]) == {"apply_exif", "max_tiles", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed"}
    assert HumanAesScorer.options_class is ExpertOptions and BundledScorer.options_class is MiniOptions


def test_literal_options_and_bad_declarations() -> None:
    @dataclasses.dataclass(frozen=True)
    class Colour(ScoreOptions):
        space: Literal["rgb", "bgr"] = option("rgb", "channel order")

    assert describe_options(Colour)[-1]["choices"] == ["rgb", "bgr"]
    assert parse_options(Colour, {"space": "bgr"}).space == "bgr"
    with pytest.raises(HumanAesError, match="'space' must be one of 'rgb', 'bgr', got 'hsv'"):
        parse_options(Colour, {"space": "hsv"})

    @dataclasses.dataclass(frozen=True)
    class Broken(ScoreOptions):
        sizes: list = option(None, "no lists")  # type: ignore[type-arg]

    with pytest.raises(TypeError, match="Broken.sizes"):
        describe_options(Broken)


# -- validation -------------------------------------------------------------------------------------


def test_unknown_option_is_an_error_naming_it(bundled: BundledScorer, tmp_path) -> None:
    with pytest.raises(HumanAesError) as info:
        bundled.score(tmp_path / "never-read.jpg", max_tiles=3)
    message = str(info.value)
    assert "'max_tiles'" in message and "'humanaes-mini'" in message and "use_face" in message
    with pytest.raises(HumanAesError, match="options 'max_tiles', 'colour' not available"):
        bundled.parse_options(max_tiles=3, colour="red")


def test_iter_score_checks_options_at_the_call(bundled: BundledScorer) -> None:
    def never_read() -> Iterator[str]:
        raise AssertionError("no image may be read before the options are checked")
        yield ""

    with pytest.raises(HumanAesError, match="max_new_tokens"):
        bundled.iter_score(never_read(), max_new_tokens=5)  # raises without iterating


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_tiles": 0}, "'max_tiles' must be an integer >= 1 and <= 64 (or null), got 0"),
        ({"max_new_tokens": 10**9}, "'max_new_tokens' must be an integer >= 1 and <= 2048, got 1000000000"),
        ({"max_tiles": True}, "'max_tiles' must be an integer"),  # a bool is not a tile count
        ({"max_tiles": 2.5}, "'max_tiles' must be an integer"),
        ({"max_new_tokens": None}, "'max_new_tokens' must be an integer >= 1 and <= 2048, got None"),
        ({"max_new_tokens": "many"}, "'max_new_tokens' must be an integer"),
        ({"apply_exif": "no"}, "'apply_exif' must be true or false, got 'no'"),  # text only from forms
    ],
)
def test_ill_typed_options(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HumanAesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options(ExpertOptions, values)


def test_huge_bad_value_gives_a_short_message() -> None:
    with pytest.raises(HumanAesError) as info:
        parse_options(MiniOptions, {"use_face": "x" * 1_000_000})
    assert len(str(info.value)) < 150 and str(info.value).endswith("...")


def test_text_values_from_forms() -> None:
    opts = parse_options(ExpertOptions, {"max_tiles": "6", "apply_exif": "false", "max_new_tokens": "12"}, from_text=True)
    assert (opts.max_tiles, opts.apply_exif, opts.max_new_tokens) == (6, False, 12)
    assert parse_options(ExpertOptions, {"max_tiles": "null"}, from_text=True).max_tiles is None
    assert parse_options(MiniOptions, {"tta_flip": "TRUE"}, from_text=True).tta_flip is True
    with pytest.raises(HumanAesError, match="'max_tiles' must be an integer >= 1 and <= 64"):
        parse_options(ExpertOptions, {"max_tiles": "six"}, from_text=True)
    with pytest.raises(HumanAesError, match="'max_pixels' not available"):
        parse_options(MiniOptions, {"max_pixels": "1"}, from_text=True, client_only=True)


def test_parsed_options_record_the_run() -> None:
    opts = parse_options(MiniOptions, {"use_face": False}, defaults={"apply_exif": False})
    assert dataclasses.asdict(opts) == {
        "apply_exif": False, "max_pixels": DEFAULT_MAX_PIXELS, "use_face": False, "tta_flip": None,
    }
    assert model_options(opts) == {"use_face": False, "tta_flip": None}  # what the family's hooks get
    assert parse_options(MiniOptions, dataclasses.asdict(opts)) == opts  # round trip


# -- one place for EXIF; the public decode hook ----------------------------------------------------


def test_exif_is_an_option_with_the_scorer_default() -> None:
    scorer, data = SizeScorer(), _rotated_jpeg()
    assert scorer.score(data)[0].overall == pytest.approx(20 / 60)  # rotated by default
    assert scorer.score(data, apply_exif=False)[0].overall == pytest.approx(40 / 60)
    scorer.apply_exif = False  # what load(apply_exif=False) sets
    assert scorer.score(data)[0].overall == pytest.approx(40 / 60)
    assert scorer.score(data, apply_exif=True)[0].overall == pytest.approx(20 / 60)
    assert scorer.seen_options == [{}, {}, {}, {}]  # decoding options stay with decoding


def test_load_sets_the_exif_default_for_the_bundled_model() -> None:
    scorer = humanaes.load(apply_exif=False, dtype="float32")
    assert scorer.parse_options().apply_exif is False
    assert scorer.parse_options(apply_exif=True).apply_exif is True


def test_bundled_uses_the_public_decode_hook(bundled: BundledScorer, tmp_path) -> None:
    assert "_run_batch" not in vars(BundledScorer) and "decode" in vars(BundledScorer)
    # The fast JPEG path must keep the pixel limit on the file's own size: a draft-decoded 4 MP
    # JPEG is small once decoded, yet over a 0.5 MP limit it is refused.
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 2000), (150, 110, 90)).save(path, quality=80)
    refused = bundled.score(path, max_pixels=500_000)[0]
    assert refused.error is not None and "big.jpg" in refused.error and "500000" in refused.error.replace(",", "")
    assert bundled.score(path)[0].error is None


def test_bundled_model_options_reach_the_model(bundled: BundledScorer, tmp_path) -> None:
    path = tmp_path / "face.jpg"
    Image.open("examples/grace_hopper.jpg").save(path)
    with_face, without = bundled.score([path, path], use_face=True), bundled.score(path, use_face=False)
    assert with_face[0].person_found is True and with_face[0].overall == pytest.approx(with_face[1].overall, abs=1e-6)
    assert without[0].person_found is False and without[0].overall != with_face[0].overall


def test_bundled_scoring_imports_no_transformers_or_web_stack() -> None:
    """The bundled model (and the service's batcher) load without transformers/PEFT: the service
    is ready in about a second instead of after importing a language-model stack."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, humanaes, humanaes.serve.batcher\n"
        "humanaes.load(dtype='float32').score('examples/grace_hopper.jpg')\n"
        "print(sorted(m for m in ('transformers', 'peft', 'accelerate', 'fastapi') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
