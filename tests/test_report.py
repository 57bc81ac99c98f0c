"""humanaes.io.report: the self-contained HTML report (parsed structure, escaping, no network)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from humanaes.io import COLUMNS, DIMENSION_COLUMNS, PROB_COLUMNS
from humanaes.io.report import (
    DIMENSION_LABELS,
    LEVEL_COLOURS,
    WCAG_AA_TEXT,
    build_report,
    contrast_ratio,
    histogram_svg,
    latest_rows,
    radar_svg,
    thumbnail_data_uri,
    wrap_points,
    write_report,
)
from humanaes.schema import score_to_level

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
# A legal POSIX file name (no "/") full of markup.
EVIL = "evil<script>alert(1)&\"quote'<b><img src=x onerror=alert(2)>.png"


class Page(HTMLParser):
    """Collects tags with attributes and all text, in document order."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _row(image: str, overall: float | None, *, dims: bool = True, error: str | None = None, **extra: Any) -> dict:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(image=image, model="pixel-test", mode="all", error=error)
    if overall is not None:
        # As in "all" mode: overall is the MetaVoter's score, the heads differ from it.
        row.update(overall=overall, level=score_to_level(overall), lm_score=round(overall - 0.02, 6),
                   regression_score=round(overall + 0.01, 6), metavoter_score=overall)
        row.update(zip(PROB_COLUMNS, (0.1, 0.2, 0.4, 0.2, 0.1)))
        if dims:
            row.update(zip(DIMENSION_COLUMNS, [min(1.0, overall + 0.01 * i) for i in range(12)]))
    row.update(extra)
    return row


@pytest.fixture
def rows() -> list[dict]:
    return [
        _row("/data/set/a.jpg", 0.81),
        _row(f"/data/set/{EVIL}", 0.33, annotation="Facial Brightness: <i>good</i>\nOutfit: fair & fine"),
        _row("/data/set/sub/c.png", 0.55, dims=False),
        _row("/data/set/broken.jpg", None, error="/data/set/broken.jpg: not an image <Pillow> can read"),
    ]


def test_structure(rows: list[dict]) -> None:
    page = Page(build_report(rows, thumbnails={"/data/set/a.jpg": "data:image/jpeg;base64,AAAA"}))
    assert len(page.all("table", id="results")) == 1
    assert len(page.all("tr", **{"class": "ok"})) == 3 and len(page.all("tr", **{"class": "err"})) == 1
    text = " ".join(page.text)
    for label in ("overall", "level", "LM head", "regression", "MetaVoter", *DIMENSION_LABELS):
        assert label in text
    # One radar per row with dimensions (2 of 4) and one histogram.
    assert len(page.all("svg", **{"class": "radar"})) == 2
    assert len(page.all("svg", **{"class": "hist"})) == 1
    # Every numeric cell carries a sort key; the failed row sorts last (empty key).
    assert len(page.all("td", **{"data-v": ""})) > 0
    assert "1 failed" in text and "3 scored" in text
    assert "not an image <Pillow> can read" in text  # error shown, decoded from escaped text


def test_sortable_headers_and_script(rows: list[dict]) -> None:
    html = build_report(rows)
    page = Page(html)
    sortable = [a for t, a in page.tags if t == "th" and "nosort" not in (a.get("class") or "")]
    assert len(sortable) >= 5 + 12
    assert all(a.get("data-type") in ("num", "text") for a in sortable)
    scripts = page.all("script")
    assert len(scripts) == 1 and "src" not in scripts[0]  # inline only
    assert "addEventListener('click'" in html


def test_escaping(rows: list[dict]) -> None:
    html = build_report(rows, title="Report <of> & \"things\"")
    page = Page(html)
    # Same tags as with harmless text: nothing in a file name, annotation or title became markup.
    plain = [dict(r, image=r["image"].replace(EVIL, "plain.png"), annotation=r["annotation"] and "plain") for r in rows]
    assert [t for t, _ in page.tags] == [t for t, _ in Page(build_report(plain, title="plain")).tags]
    assert len(page.all("script")) == 1 and not page.all("i")
    assert EVIL not in html and "<script>alert" not in html and "<img src=x" not in html
    text = "".join(page.text)
    assert EVIL in text  # shown literally to the reader
    assert "Facial Brightness: <i>good</i>" in text and "fair & fine" in text
    assert "Report <of> & \"things\"" in text
    titles = [a.get("title") for t, a in page.tags if a.get("title")]
    assert f"/data/set/{EVIL}" in titles  # attribute values escaped and intact


def test_no_external_urls(rows: list[dict]) -> None:
    html = build_report(rows, thumbnails={"/data/set/a.jpg": "data:image/jpeg;base64,AAAA",
                                          "/data/set/sub/c.png": "https://example.com/x.jpg"})
    page = Page(html)
    assert not re.search(r"https?://|//[a-z]|url\(", html, re.I)
    assert not page.all("link") and not page.all("iframe")
    for tag, attrs in page.tags:
        for key in ("src", "href", "xlink:href", "action"):
            value = attrs.get(key)
            assert value is None or value.startswith("data:image/"), (tag, key, value)
    csp = page.all("meta", **{"http-equiv": "Content-Security-Policy"})
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


def test_radar_svg() -> None:
    svg = radar_svg([0.1 * i for i in range(11)] + [None])
    page = Page(svg)
    assert len(page.all("circle")) == 12
    assert len(page.all("polygon", **{"class": "ring"})) == 5
    assert [t for t in page.text if t.strip()][-12:] == list(DIMENSION_LABELS)
    assert "n/a" in svg and "Comprehensive Aesthetic Score" in svg
    points = page.all("polygon", **{"class": "area"})[0]["points"]
    assert len((points or "").split()) == 12


def test_histogram_svg() -> None:
    values = [0.0, 0.05, 0.5, 0.5, 0.99, 1.0, 1.3]
    page = Page(histogram_svg(values))
    assert len(page.all("rect")) == 20
    counts = [int(t.rsplit(":", 1)[1]) for t in page.text if re.match(r"\d\.\d\d-\d\.\d\d: \d+", t)]
    assert sum(counts) == len(values) and counts[-1] == 3 and counts[10] == 2  # 1.0 and above: last bin
    assert "mean" in "".join(page.text)


def test_latest_rows_keeps_last_write_per_image() -> None:
    rows = [_row("/a", None, error="x"), _row("/b", 0.5), _row("/a", 0.7)]
    assert [(r["image"], r["overall"]) for r in latest_rows(rows)] == [("/b", 0.5), ("/a", 0.7)]


def test_thumbnail(tmp_path: Path) -> None:
    uri = thumbnail_data_uri(EXAMPLES / "grace_hopper.jpg")
    assert uri and uri.startswith("data:image/jpeg;base64,")
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert thumb.format == "JPEG" and max(thumb.size) == 160 and thumb.size[0] < 160  # portrait kept
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert thumbnail_data_uri(tmp_path / "bad.png") is None
    assert thumbnail_data_uri(tmp_path / "missing.png") is None


def test_write_report_with_examples(tmp_path: Path) -> None:
    rows = [_row(str(EXAMPLES / "astronaut.png"), 0.7), _row(str(EXAMPLES / "grace_hopper.jpg"), 0.4, dims=False),
            _row(str(tmp_path / "gone.jpg"), None, error="gone")]
    out = write_report(rows, tmp_path / "report.html")
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    imgs = page.all("img")
    assert len(imgs) == 2 and all((a["src"] or "").startswith("data:image/jpeg;base64,") for a in imgs)
    assert "no preview" in html
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_browser_render(tmp_path: Path) -> None:
    """Render the demo, a 30-image and a no-person report in headless Chromium: screenshots not
    blank, sorting works, the 30-image table spans >= 90% of a 1400-px window, the no-person flag
    and note are visible (skipped without Chromium)."""
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("chromium is not installed (scripts/check_report_browser.sh installs it)")
    shot = tmp_path / "shot.png"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "check_report_browser.sh"), "", str(shot)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: the report renders" in proc.stdout
    assert all(p.exists() for p in (shot, tmp_path / "shot-30.png", tmp_path / "shot-noperson.png"))
    assert "1 no-person flags, note shown: True" in proc.stdout


# -- the model, its meaning and licence; no-person flags; layout (issue 11) -----------------------


def _fast_row(image: str, overall: float, model: str = "humanaes-mini", **extra: Any) -> dict:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(image=image, model=model, mode="fast", overall=overall, level=score_to_level(overall),
               regression_score=overall, error=None)
    row.update(extra)
    return row


def test_title_and_header_name_the_bundled_proxy() -> None:
    html = build_report([_fast_row("/p/a.jpg", 0.6)])
    page = Page(html)
    title = "Scores by humanaes-mini, the bundled proxy model (not HumanAesExpert)"
    assert page.text.count(title) == 2  # <title> and <h1>
    assert "HumanAesExpert report" not in html
    text = " ".join(page.text)
    assert "facial attractiveness ratings of MEBeauty raters" in text  # what the score means
    assert "non-commercial research use only" in text  # the weights' licence
    assert page.all("div", **{"class": "model proxy"})


def test_title_names_humanaesexpert_and_its_release_licence() -> None:
    page = Page(build_report([_fast_row("/p/a.jpg", 0.6, model="HumanAesExpert-1B")]))
    text = " ".join(page.text)
    assert "Scores by HumanAesExpert-1B (HumanAesExpert)" in text
    assert "human image aesthetics in [0, 1], trained on HumanBeauty" in text
    assert "set by the HumanAesExpert release" in text and "non-commercial" not in text
    assert not page.all("div", **{"class": "model proxy"})


def test_rows_without_a_person_are_flagged() -> None:
    rows = [
        _fast_row("/p/face.jpg", 0.7, person_found=True),
        _fast_row("/p/gradient.png", 0.61, person_found=False),
        _fast_row("/p/tiny.png", 0.45, person_found="false"),  # CSV/Parquet carry text
        _fast_row("/p/old.jpg", 0.5),  # written before the field existed: unknown, not flagged
        _fast_row("/p/none.jpg", 0.5, person_found=None),  # a model without a detector
    ]
    rows[3].pop("person_found", None)
    page = Page(build_report(rows))
    flagged = page.all("tr", **{"class": "ok noperson"})
    assert len(flagged) == 2
    text = " ".join(page.text)
    assert "2 images had no detectable person: their scores are not meaningful (gradient.png, tiny.png)" in text
    assert text.count("no person found") == 3  # the note's legend + one flag per flagged row


def test_level_chips_meet_wcag_aa_contrast() -> None:
    rows = [_fast_row(f"/p/{i}.jpg", v) for i, v in enumerate((0.1, 0.3, 0.5, 0.7, 0.9))]
    page = Page(build_report(rows))
    chips = page.all("span", **{"class": "chip"})
    assert len(chips) == 10  # five in the header, one per row
    for chip in chips:
        style = dict(part.split(":") for part in (chip["style"] or "").split(";"))
        assert contrast_ratio(style["background"], style["color"]) >= WCAG_AA_TEXT, style
    assert {LEVEL_COLOURS[lv] for lv in LEVEL_COLOURS} == {dict(p.split(":") for p in (c["style"] or "").split(";"))["background"]
                                                           for c in chips}
    assert round(contrast_ratio("#ffffff", "#000000"), 2) == 21.0 and round(contrast_ratio("#e6c229", "#ffffff"), 2) == 1.73


def test_columns_that_repeat_overall_are_hidden() -> None:
    fast = [_fast_row("/p/a.jpg", 0.6), _fast_row("/p/b.jpg", 0.3)]
    page = Page(build_report(fast))
    assert "regression equals overall for every image: its column is not repeated." in " ".join(page.text)
    assert sum(1 for t, _ in page.tags if t == "th") == 5  # #, preview, image, overall, level
    differs = fast + [dict(_fast_row("/p/c.jpg", 0.5), regression_score=0.52)]
    assert len([t for t, _ in Page(build_report(differs)).tags if t == "th"]) == 6


def test_names_wrap_between_parts_and_the_table_uses_the_width() -> None:
    assert wrap_points("set/very_long-name.v2.jpg") == "set/<wbr>very_<wbr>long-<wbr>name.<wbr>v2.<wbr>jpg"
    assert wrap_points("<b>_x") == "&lt;b&gt;_<wbr>x"
    html = build_report([_fast_row("/p/a_b.jpg", 0.6)])
    assert "anywhere" not in html  # overflow-wrap:anywhere breaks names mid-word
    assert re.search(r"table\{[^}]*width:100%", html)


def test_report_temp_file_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "report.html.tmp").symlink_to(victim)  # the old fixed temp name
    write_report([_fast_row(str(EXAMPLES / "astronaut.png"), 0.6)], tmp_path / "report.html")
    assert victim.read_text() == "keep me"
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
