#!/usr/bin/env bash
# Render a humanaes HTML report in headless Chromium and check that the screenshot is not blank.
#
# Usage: scripts/check_report_browser.sh [REPORT.html] [SCREENSHOT.png]
#
# Without REPORT, a demo report of examples/ is generated first (illustrative fixed scores, no
# model needed; it also holds a failed row and a file name full of HTML metacharacters).
# Installs Debian's chromium with apt-get when no Chromium is found (needs root).
# Exit status: 0 ok, 1 the screenshot looks blank/wrong or the page logged a CSP/JS error,
# 3 no browser available.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"

find_browser() {
    local b
    for b in chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    done
    return 1
}

if ! browser="$(find_browser)"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium (apt-get) ..." >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
        browser="$(find_browser)"
    else
        echo "no chromium found; install it (apt-get install -y chromium) and rerun" >&2
        exit 3
    fi
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
report="${1:-}"
shot="${2:-$workdir/report.png}"

if [ -z "$report" ]; then
    report="$workdir/report.html"
    "$python" - "$repo" "$report" <<'PY'
import shutil, sys
from pathlib import Path

from humanaes.io import COLUMNS, DIMENSION_COLUMNS, PROB_COLUMNS
from humanaes.report import write_report
from humanaes.schema import score_to_level

repo, out = Path(sys.argv[1]), Path(sys.argv[2])
work = out.parent
odd = work / 'odd <b>&"name\'.jpg'
shutil.copy(repo / "examples" / "grace_hopper.jpg", odd)
images = [repo / "examples" / "astronaut.png", repo / "examples" / "grace_hopper.jpg", odd]
rows = []
# Fixed illustrative values (not model outputs): enough variety for bars, colours and radars.
for k, (image, overall) in enumerate(zip(images, (0.82, 0.57, 0.31))):
    row = dict.fromkeys(COLUMNS)
    dims = [min(0.98, max(0.02, overall + 0.06 * ((i * 7 + k * 3) % 5 - 2))) for i in range(12)]
    dims[11] = overall
    row.update(image=str(image), overall=overall, level=score_to_level(overall), lm_score=overall - 0.03,
               regression_score=overall + 0.02, metavoter_score=overall, model="demo", mode="all")
    row.update(zip(DIMENSION_COLUMNS, dims))
    row.update(zip(PROB_COLUMNS, (0.05, 0.1, 0.2, 0.4, 0.25)))
    rows.append(row)
bad = dict.fromkeys(COLUMNS)
bad.update(image=str(work / "missing.jpg"), error=f"{work / 'missing.jpg'}: file not found", model="demo", mode="all")
rows.append(bad)
write_report(rows, out, title="humanaes report rendering check (illustrative scores)")
PY
fi

[ -f "$report" ] || { echo "no such report: $report" >&2; exit 1; }
url="file://$(realpath "$report")"
log="$workdir/chromium.log"
# --no-sandbox: containers run this as root; virtual-time-budget lets the inline script run.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --enable-logging=stderr --v=0 --virtual-time-budget=2000 \
    --window-size="${WINDOW_SIZE:-1400,1000}" --screenshot="$shot" "$url" >"$log" 2>&1 || {
    cat "$log" >&2; echo "chromium failed" >&2; exit 1; }

# Any console error (a CSP violation would mean an external load or blocked inline code).
if grep -E "Refused to|Uncaught|CONSOLE.*[Ee]rror" "$log" >&2; then
    echo "the page logged errors (above)" >&2
    exit 1
fi

# The sort script: click "overall" twice in a copy of the page and read the order back.
sortpage="$workdir/sortcheck.html"
cat "$report" >"$sortpage"
cat >>"$sortpage" <<'JS'
<script>
(function(){
  var t=document.getElementById('results'), h=t.tHead.rows[0].cells, idx=-1;
  for(var i=0;i<h.length;i++){if(h[i].textContent.trim()==='overall'){idx=i;}}
  function col(){return Array.prototype.map.call(t.tBodies[0].rows,function(r){return r.cells[idx].getAttribute('data-v');}).join('|');}
  h[idx].click(); var a=col(); h[idx].click(); var d=col();
  var p=document.createElement('pre'); p.id='sortcheck'; p.textContent='ASC['+a+'] DESC['+d+']'; document.body.appendChild(p);
})();
</script>
JS
"$browser" --headless --no-sandbox --disable-gpu --no-first-run --virtual-time-budget=2000 \
    --dump-dom "file://$sortpage" >"$workdir/dom.html" 2>/dev/null
"$python" - "$workdir/dom.html" <<'PY'
import re, sys

dom = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r'<pre id="sortcheck">ASC\[(.*?)\] DESC\[(.*?)\]</pre>', dom)
if not m:
    sys.exit("sort check did not run (script error?)")
def split(s):
    vals = s.split("|")
    nums = [float(v) for v in vals if v]
    return vals, nums
asc, asc_nums = split(m.group(1))
desc, desc_nums = split(m.group(2))
ok = (asc_nums == sorted(asc_nums) and desc_nums == sorted(desc_nums, reverse=True)
      and asc[len(asc_nums):] == [""] * (len(asc) - len(asc_nums))
      and desc[len(desc_nums):] == [""] * (len(desc) - len(desc_nums)))
print(f"sorting by overall: ascending {asc}, descending {desc}")
if not ok:
    sys.exit("clicking a header does not sort the table as expected")
PY

"$python" - "$shot" <<'PY'
import sys

import numpy as np
from PIL import Image

shot = sys.argv[1]
img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
h, w, _ = img.shape
std = float(img.std())
background = (np.abs(img - img[5, w - 5]).sum(axis=2) < 12).mean()
colours = len(np.unique(img.reshape(-1, 3) // 8, axis=0))
# Level colours of the histogram/chips (bad ... excellent) must show up somewhere.
levels = {"bad": (215, 48, 39), "poor": (252, 141, 89), "fair": (230, 194, 41), "good": (127, 191, 77), "excellent": (26, 152, 80)}
seen = [name for name, rgb in levels.items() if (np.abs(img - np.array(rgb)).sum(axis=2) < 30).sum() > 20]
print(f"screenshot {shot}: {w}x{h}, std {std:.1f}, background {background:.0%}, colour bins {colours}, level colours {seen}")
problems = []
if std < 10:
    problems.append("almost uniform image")
if background > 0.97:
    problems.append("nearly all background")
if colours < 200:
    problems.append("too few colours for thumbnails to be there")
if len(seen) < 3:
    problems.append("level colours missing (histogram/chips not drawn?)")
if problems:
    sys.exit("report screenshot looks wrong: " + "; ".join(problems))
print("ok: the report renders")
PY
