"""Property test: random names and rows written through each writer read back unchanged, by
humanaes (resume) and by pandas / pyarrow, with one row per image even when images repeat."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from humanaes import io as hio  # noqa: E402
from humanaes.schema import LEVELS, ScoreResult  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX byte file names")

# File names are any bytes but NUL and "/": not valid UTF-8 in many draws.
names = st.binary(min_size=1, max_size=12).filter(lambda b: b"\x00" not in b and b"/" not in b and b not in (b".", b".."))
texts = st.text(min_size=1, max_size=20)  # control characters, quotes, commas, CR/LF, emoji, U+2028 ...
maybe_text = st.none() | texts
scores = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64)
extras = st.dictionaries(st.text(max_size=6), st.none() | st.booleans() | st.integers() | st.text(max_size=6), max_size=3)


@st.composite
def results(draw: Any, key: str) -> tuple[ScoreResult, str | None]:
    result = ScoreResult(image=key)
    if draw(st.booleans()):
        result.error = draw(texts)
    else:
        result.overall = draw(scores)
        result.level = draw(st.none() | st.sampled_from(LEVELS))
        result.lm_score, result.regression_score, result.metavoter_score = draw(scores), draw(scores), draw(scores)
        if draw(st.booleans()):
            probs = draw(st.lists(st.floats(0, 1), min_size=5, max_size=5))
            result.level_probs = dict(zip(LEVELS, probs))
        if draw(st.booleans()):
            result.set_expert(draw(st.lists(st.floats(0, 1), min_size=12, max_size=12)))
        result.annotation = draw(maybe_text)
    result.person_found = draw(st.none() | st.booleans())
    result.extra = draw(extras)
    return result, draw(maybe_text)


@st.composite
def batches(draw: Any) -> list[list[tuple[ScoreResult, str | None, str, str]]]:
    """1-3 batches of rows; an image may come back in a later batch (a retry replaces its row)."""
    keys = draw(st.lists(names.map(lambda n: hio.image_key(b"/data/" + n)), min_size=1, max_size=6, unique=True))
    out = []
    for _ in range(draw(st.integers(1, 3))):
        chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True))
        model, mode = draw(texts), draw(st.sampled_from(["fast", "expert", "all"]))
        out.append([(*draw(results(k)), model, mode) for k in chosen])
    return out


def independent_rows(out: Path) -> list[dict[str, Any]]:
    """The rows as other tools read them."""
    if out.suffix == ".csv":
        import pandas as pd

        frame = pd.read_csv(out, dtype=str, keep_default_na=False)
        return frame.to_dict("records")
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a == b)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=batches())
def test_rows_round_trip_through_every_writer(fmt: str, data: list[list[tuple[ScoreResult, str | None, str, str]]]) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"out.{fmt}"
        expected: list[dict[str, Any]] = []
        for batch in data:  # one writer (one run) per batch, as repeated runs with --retry-errors do
            writer = hio.open_writer(out, fmt, warn=lambda message: None)
            for result, display, model, mode in batch:
                writer.write_batch([result], model=model, mode=mode, displays=[display])
                expected.append(hio.flat_row(result, model=model, mode=mode, display=display))
            writer.close()
        expected = hio.latest_by_key(expected)

        # the file itself holds one row per image, readable by other tools ...
        others = independent_rows(out)
        assert [r["image"] for r in others] == [r["image"] for r in expected]
        assert [r["display"] for r in others] == [r["display"] for r in expected]
        for key in (r["image"] for r in expected):
            if key.startswith(hio.BYTES_KEY_PREFIX):
                assert os.fsencode(hio.key_to_path(key)).startswith(b"/data/")

        # ... and humanaes reads back exactly what it wrote (the resume path)
        reopened = hio.open_writer(out, fmt, warn=lambda message: None)
        got = reopened.existing
        reopened.close()
        assert [r["image"] for r in got] == [r["image"] for r in expected]
        for row, want in zip(got, expected):
            for column in hio.COLUMNS:
                assert _same(row[column], want[column]), (column, row[column], want[column])
