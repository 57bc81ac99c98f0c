"""The docs run as written: every fenced `bash`/`sh`/`python` block of README.md and docs/*.md.

Each document's blocks run in order, each in a fresh process, in one temporary folder per
document that looks like the state right after the README's set-up command: the repository's
`examples/` and `recipes/`, and an activated `.venv` whose `humanaes` and `python` are this
checkout's (PYTHONPATH). No network: HF_HUB_OFFLINE is set.

A block that cannot run here (a GPU, the real weights, a cluster, `pip install`, a Dockerfile,
a long-running server) is preceded by the line

    <!-- doc-test: skip (short reason) -->

and is counted and reported as skipped. Any other HTML comment mentioning doc-test is an error,
so a mistyped marker cannot silently run a block that was meant to be skipped.

Two kinds of stand-ins, both listed below and both checked for staleness:
- SUBSTITUTIONS replace what cannot exist here in the block text (the real HumanAesExpert
  weights -> the `humanaes-tiny` preset, a CUDA device -> the CPU); each must still match
  something, so a doc edit that drops one makes this test fail instead of leaving dead rules.
- FIXTURES are the reader's own files a document assumes (the README's `mydata/`, the guide's
  `photos/` + `scores.csv`), made from the shared MEBeauty set (real photos and ratings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "HumanBeauty"
MARKER = re.compile(r"^<!-- doc-test: skip \((?P<reason>[^()]*[^()\s][^()]*)\) -->$")
LOOKS_LIKE_MARKER = re.compile(r"doc[-_ ]?test", re.IGNORECASE)
RUN_LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
BLOCK_TIMEOUT_S = 900

# (text in the docs, what runs here instead, why). Applied to every document's blocks.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    ('humanaes.load("KwaiVGI/HumanAesExpert-1B", device="cuda"', 'humanaes.load("humanaes-tiny", device="cpu"',
     "the real weights and a GPU -> the tiny random-weight preset on the CPU"),
    ("--model KwaiVGI/HumanAesExpert-1B", "--model humanaes-tiny", "the real weights -> the tiny preset"),
    ('create_model("humanaes-1b")', 'create_model("humanaes-tiny")', "0.94 B random parameters -> the tiny preset"),
    ("max_tiles=12", "max_tiles=2", "fewer tiles keep the tiny model's CPU run in seconds"),
]



@dataclass
class Block:
    document: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip_reason: str | None


def extract_blocks(text: str, document: str) -> list[Block]:
    """Fenced blocks of a Markdown text, with the skip marker of each (the last non-blank line
    before its fence). Raises ValueError on a malformed marker or an unclosed fence."""
    blocks: list[Block] = []
    lines = text.splitlines()
    previous = ""  # last non-blank line outside blocks
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("<!--") and LOOKS_LIKE_MARKER.search(line) and not MARKER.match(line.strip()):
            raise ValueError(f"{document}:{i + 1}: malformed doc-test marker {line.strip()!r}; "
                             "write <!-- doc-test: skip (reason) -->")
        fence = FENCE.match(line)
        if fence is None:
            if line.strip():
                previous = line.strip()
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{document}:{start + 1}: code block never closed")
        marker = MARKER.match(previous)
        blocks.append(Block(document, start + 1, fence.group("lang").lower(), "\n".join(body) + "\n",
                            marker.group("reason") if marker else None))
        previous = ""
        i += 1
    return blocks


def substitute(code: str, used: set[str]) -> str:
    for old, new, _ in SUBSTITUTIONS:
        if old in code:
            used.add(old)
            code = code.replace(old, new)
    return code


def documents() -> list[str]:
    return ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))


# -- the reader's own files that the guides assume ---------------------------------------------


def _mebeauty_rows(count: int) -> list[dict]:
    label = SHARED_DATA / "HumanBeauty-58K" / "label.jsonl"
    if not label.exists():
        pytest.skip(f"shared MEBeauty data not available: {label}")
    rows = [json.loads(line) for line in label.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:count]


def make_mydata(folder: Path, count: int = 12) -> None:
    """`mydata/`: a small HumanBeauty-layout set (MEBeauty photos, linked) with train/test files."""
    images = folder / "HumanBeauty-58K" / "images"
    images.mkdir(parents=True)
    rows = _mebeauty_rows(count)
    with (folder / "HumanBeauty-58K" / "label.jsonl").open("w", encoding="utf-8") as subset:
        for row in rows:
            os.symlink(SHARED_DATA / "HumanBeauty-58K" / "images" / row["image_name"], images / row["image_name"])
            subset.write(json.dumps(row) + "\n")
    for split, part in (("train", rows[: count // 2]), ("test", rows[count // 2:])):
        with (folder / f"{split}_label.jsonl").open("w", encoding="utf-8") as fh:
            for row in part:
                fh.write(json.dumps({**row, "image_name": f"HumanBeauty-58K/images/{row['image_name']}",
                                     "is_expert": False}) + "\n")


def make_photos_and_scores(folder: Path, count: int = 60) -> None:
    """`photos/` and `scores.csv` as the fine-tuning guide starts: MEBeauty photos with their mean
    ratings on the original 1-10 scale. Copied, not linked: `data import` refuses symlinks that
    lead outside --images, as a reader's own photo folder would not have them."""
    portraits = folder / "photos" / "portraits"
    portraits.mkdir(parents=True)
    lines = ["image,score"]
    for row in _mebeauty_rows(count):
        shutil.copyfile(SHARED_DATA / "HumanBeauty-58K" / "images" / row["image_name"], portraits / row["image_name"])
        lines.append(f"portraits/{row['image_name']},{row['raw_score']}")
    (folder / "scores.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


# document -> the reader's files it assumes (made in the document's folder before its blocks run)
FIXTURES = {"README.md": {"mydata": make_mydata}, "docs/fine-tuning.md": {".": make_photos_and_scores}}


# -- running --------------------------------------------------------------------------------------


def fresh_checkout_folder(folder: Path) -> dict[str, str]:
    """Make `folder` look like the repository after the set-up command; return the environment
    of a shell in which `. .venv/bin/activate` ran."""
    for name in ("examples", "recipes"):
        os.symlink(REPO / name, folder / name)
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "humanaes").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m humanaes.cli "$@"\n')
    (bin_dir / "activate").write_text(f'export VIRTUAL_ENV="{folder / ".venv"}"\nexport PATH="{bin_dir}:$PATH"\n')
    for script in ("python", "humanaes"):
        (bin_dir / script).chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
        VIRTUAL_ENV=str(folder / ".venv"),
        PYTHONPATH=str(REPO),  # this checkout, whatever the venv's editable install points at
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),  # a shared machine: one core per block
        COLUMNS="100",
    )
    return env


def run_block(block: Block, code: str, folder: Path, env: dict[str, str], index: int) -> subprocess.CompletedProcess:
    if RUN_LANGUAGES[block.language] == "python":
        script = folder / f".doc_block_{index}.py"
        script.write_text(code, encoding="utf-8")
        command = ["python", str(script)]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


def run_document(document: str, folder: Path, used: set[str]) -> tuple[int, list[str]]:
    """Run a document's runnable blocks; returns (blocks run, skip reasons). Fails on the first
    block that exits non-zero, naming the document and line."""
    text = (REPO / document).read_text(encoding="utf-8")
    env = fresh_checkout_folder(folder)
    for where, make in FIXTURES.get(document, {}).items():
        make(folder / where)
    ran, skipped = 0, []
    for index, block in enumerate(extract_blocks(text, document)):
        if block.language not in RUN_LANGUAGES:
            continue
        if block.skip_reason is not None:
            skipped.append(block.skip_reason)
            continue
        proc = run_block(block, substitute(block.code, used), folder, env, index)
        if proc.returncode != 0:
            pytest.fail(
                f"{document}:{block.line}: the {block.language} block exits {proc.returncode}\n--- block ---\n"
                f"{block.code}--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}",
                pytrace=False,
            )
        ran += 1
    return ran, skipped


_USED_SUBSTITUTIONS: set[str] = set()


@pytest.mark.slow  # real CLI runs: 20-60 s per document on a busy 2-core machine; CI runs them
@pytest.mark.parametrize("document", documents())
def test_document_runs_as_written(document: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran, skipped = run_document(document, tmp_path, _USED_SUBSTITUTIONS)
    reasons = "; ".join(f"{n}x {r}" for r, n in sorted({r: skipped.count(r) for r in skipped}.items()))
    with capsys.disabled():
        print(f"\ndoc-test {document}: ran {ran} block(s), skipped {len(skipped)}" + (f" ({reasons})" if skipped else ""))


def test_every_substitution_still_matches() -> None:
    """A stale rule would hide that a doc changed: each must match some runnable block."""
    texts = []
    for document in documents():
        for block in extract_blocks((REPO / document).read_text(encoding="utf-8"), document):
            if block.language in RUN_LANGUAGES and block.skip_reason is None:
                texts.append(block.code)
    stale = [old for old, _, _ in SUBSTITUTIONS if not any(old in t for t in texts)]
    assert not stale, f"substitutions that match no runnable block: {stale}"


def test_setup_command_ends_by_activating_the_venv() -> None:
    """The runner runs blocks with `.venv/bin` on PATH, as the README's set-up command leaves the
    shell; without the activation at its end, bare `humanaes` would be 'command not found'."""
    setup = [b for b in extract_blocks((REPO / "README.md").read_text(encoding="utf-8"), "README.md")
             if "python3 -m venv .venv" in b.code]
    assert setup, "README.md has no set-up command"
    assert setup[0].code.strip().endswith("&& . .venv/bin/activate"), setup[0].code


def test_blocks_are_runnable_or_marked() -> None:
    """Bare `humanaes`/`huggingface-cli` habits the issue found, caught without running anything."""
    for document in documents():
        for block in extract_blocks((REPO / document).read_text(encoding="utf-8"), document):
            if block.language not in RUN_LANGUAGES or block.skip_reason is not None:
                continue
            assert "huggingface-cli" not in block.code, f"{document}:{block.line}: use `hf download`"
            assert "pip install" not in block.code, f"{document}:{block.line}: pip install needs a skip marker"


# -- the runner itself ------------------------------------------------------------------------------

SAMPLE = """# Title

```bash
echo one
```

<!-- doc-test: skip (needs a GPU) -->

```python
import torch; torch.cuda.init()
```

```text
not run
```

```sh
echo two
```
"""


def test_extract_blocks_finds_markers_and_languages() -> None:
    blocks = extract_blocks(SAMPLE, "sample.md")
    assert [(b.line, b.language, b.skip_reason) for b in blocks] == [
        (3, "bash", None), (9, "python", "needs a GPU"), (13, "text", None), (17, "sh", None)]
    assert blocks[0].code == "echo one\n"


@pytest.mark.parametrize("bad", ["<!-- doc-test: skip -->", "<!-- doc-test: skip () -->", "<!-- doctest: skip (x) -->",
                                 "<!-- doc-test: skip(x) -->"])
def test_malformed_markers_are_errors(bad: str) -> None:
    text = SAMPLE.replace("<!-- doc-test: skip (needs a GPU) -->", bad)
    with pytest.raises(ValueError, match="malformed doc-test marker"):
        extract_blocks(text, "x.md")


def test_a_failing_block_fails_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo" / "docs").mkdir(parents=True)
    for name in ("examples", "recipes"):
        (tmp_path / "repo" / name).mkdir()
    (tmp_path / "repo" / "doc.md").write_text("```bash\necho fine\n```\n\n```bash\nfalse\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path / "repo")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(pytest.fail.Exception, match=r"doc.md:5: the bash block exits 1"):
        run_document("doc.md", work, set())


def test_substitution_table_applies(tmp_path: Path) -> None:
    used: set[str] = set()
    code = 'x = humanaes.load("KwaiVGI/HumanAesExpert-1B", device="cuda", dtype="bfloat16")\n'
    assert substitute(code, used) == 'x = humanaes.load("humanaes-tiny", device="cpu", dtype="bfloat16")\n'
    assert used == {SUBSTITUTIONS[0][0]}


def test_fixture_folders_are_real_data(tmp_path: Path) -> None:
    make_mydata(tmp_path / "mydata", count=4)
    make_photos_and_scores(tmp_path, count=3)
    assert len((tmp_path / "mydata" / "test_label.jsonl").read_text().splitlines()) == 2
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "image,score" and len(rows) == 4
    image, score = rows[1].split(",")
    assert (tmp_path / "photos" / image).resolve().is_file() and 1.0 <= float(score) <= 10.0
    assert shutil.which("bash")
