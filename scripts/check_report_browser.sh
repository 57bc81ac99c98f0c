#!/usr/bin/env bash
# Render a humanaes HTML report in headless Chromium and check that the screenshot is not blank.
#
# Usage: scripts/check_report_browser.sh [REPORT.html] [SCREENSHOT.png]
#
# Without REPORT, three reports are generated (illustrative fixed scores, no model needed) and
# each is rendered, screenshotted and checked:
#   demo      examples/ in "all" mode, a failed row and a file name full of HTML metacharacters
#   30        30 images with long file names in fast mode (shared MEBeauty photos when present):
#             the table must use the window's width (>= 90% of 1400 px)
#   noperson  a picture without a person (person_found false): the flag and the note must show
# SCREENSHOT names the demo's screenshot; the others are written beside it (-30.png, -noperson.png).
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
window="${WINDOW_SIZE:-1400,1000}"

make_reports() {
    "$python" - "$repo" "$workdir" <<'PY'
import shutil, sys
from pathlib import Path

from PIL import Image

from humanaes.io import COLUMNS, DIMENSION_COLUMNS, PROB_COLUMNS
from humanaes.io.report import write_report
from humanaes.schema import score_to_level

repo, work = Path(sys.argv[1]), Path(sys.argv[2])

def base(image, model, mode):
    row = dict.fromkeys(COLUMNS)
    row.update(image=str(image), model=model, mode=mode)
    return row

# demo: fixed illustrative values (not model outputs): enough variety for bars, colours and radars
odd = work / 'odd <b>&"name\'.jpg'
shutil.copy(repo / "examples" / "grace_hopper.jpg", odd)
rows = []
for k, (image, overall) in enumerate(zip([repo / "examples" / "astronaut.png", repo / "examples" / "grace_hopper.jpg", odd],
                                         (0.82, 0.57, 0.31))):
    row = base(image, "demo", "all")
    dims = [min(0.98, max(0.02, overall + 0.06 * ((i * 7 + k * 3) % 5 - 2))) for i in range(12)]
    dims[11] = overall
    row.update(overall=overall, level=score_to_level(overall), lm_score=overall - 0.03,
               regression_score=overall + 0.02, metavoter_score=overall)
    row.update(zip(DIMENSION_COLUMNS, dims))
    row.update(zip(PROB_COLUMNS, (0.05, 0.1, 0.2, 0.4, 0.25)))
    rows.append(row)
bad = base(work / "missing.jpg", "demo", "all")
bad.update(error=f"{work / 'missing.jpg'}: file not found")
rows.append(bad)
write_report(rows, work / "demo.html", title="humanaes report rendering check (illustrative scores)")

# 30 images, fast mode, long names: the shared MEBeauty photos when present, else copies of the examples
shared = repo.parent / "shared" / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images"
photos = sorted(shared.glob("*.jpg"))[:30] if shared.is_dir() else []
if len(photos) < 30:
    photos = []
    for i in range(30):
        copy = work / "thirty" / f"portrait_session-{i:02d}_{'very_long_descriptive_name' if i % 3 == 0 else 'short'}.jpg"
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(repo / "examples" / "grace_hopper.jpg", copy)
        photos.append(copy)
rows = []
for i, image in enumerate(photos):
    overall = 0.05 + 0.9 * ((i * 37) % 30) / 29
    row = base(image, "humanaes-mini", "fast")
    row.update(overall=overall, level=score_to_level(overall), regression_score=overall, person_found=True)
    rows.append(row)
write_report(rows, work / "thirty.html")

# no person: a colour gradient the face detector finds nothing in
gradient = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
gradient.save(work / "gradient_no_person.png")
rows = []
for image, overall, person in ((work / "gradient_no_person.png", 0.608, False), (repo / "examples" / "astronaut.png", 0.555, True)):
    row = base(image, "humanaes-mini", "fast")
    row.update(overall=overall, level=score_to_level(overall), regression_score=overall, person_found=person)
    rows.append(row)
write_report(rows, work / "noperson.html")
PY
}

render() {  # render REPORT SCREENSHOT: screenshot, then fail on console errors
    local page="$1" png="$2" log="$workdir/chromium.log"
    # --no-sandbox: containers run this as root; virtual-time-budget lets the inline script run.
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
        --enable-logging=stderr --v=0 --virtual-time-budget=2000 \
        --window-size="$window" --screenshot="$png" "file://$(realpath "$page")" >"$log" 2>&1 || {
        cat "$log" >&2; echo "chromium failed on $page" >&2; exit 1; }
    # Any console error (a CSP violation would mean an external load or blocked inline code).
    if grep -E "Refused to|Uncaught|CONSOLE.*[Ee]rror" "$log" >&2; then
        echo "$page logged errors (above)" >&2
        exit 1
    fi
}

probe() {  # probe REPORT: run a measuring script in a copy of the page; print its <pre id="probe"> line
    local page="$1" copy="$workdir/probe.html"
    cat "$page" >"$copy"
    cat >>"$copy" <<'JS'
<script>
(function(){
  var t=document.getElementById('results'), h=t.tHead.rows[0].cells, idx=-1;
  for(var i=0;i<h.length;i++){if(h[i].textContent.trim()==='overall'){idx=i;}}
  function col(){return Array.prototype.map.call(t.tBodies[0].rows,function(r){return r.cells[idx].getAttribute('data-v');}).join('|');}
  var width=(t.getBoundingClientRect().width/window.innerWidth).toFixed(3);
  var flags=document.querySelectorAll('tr.noperson .flag').length;
  var note=document.querySelector('.noperson-note'); var noteShown=note?note.offsetHeight>0:false;
  h[idx].click(); var a=col(); h[idx].click(); var d=col();
  var p=document.createElement('pre'); p.id='probe';
  p.textContent='WIDTH['+width+'] FLAGS['+flags+'] NOTE['+noteShown+'] ASC['+a+'] DESC['+d+']';
  document.body.appendChild(p);
})();
</script>
JS
    "$browser" --headless --no-sandbox --disable-gpu --no-first-run --virtual-time-budget=2000 \
        --window-size="$window" --dump-dom "file://$copy" 2>/dev/null | grep -o '<pre id="probe">[^<]*</pre>' || true
}

check_probe() {  # check_probe PROBE-LINE MIN-WIDTH MIN-FLAGS
    "$python" - "$1" "$2" "$3" <<'PY'
import re, sys

line, min_width, min_flags = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
m = re.search(r"WIDTH\[(.*?)\] FLAGS\[(\d+)\] NOTE\[(\w+)\] ASC\[(.*?)\] DESC\[(.*?)\]", line)
if not m:
    sys.exit("the measuring script did not run (script error?)")
width, flags, note = float(m.group(1)), int(m.group(2)), m.group(3) == "true"
def split(s):
    vals = s.split("|")
    return vals, [float(v) for v in vals if v]
asc, asc_nums = split(m.group(4))
desc, desc_nums = split(m.group(5))
print(f"table width {width:.0%} of the window, {flags} no-person flags, note shown: {note}; "
      f"sorting by overall: ascending {asc[:6]}..., descending {desc[:6]}...")
problems = []
if not (asc_nums == sorted(asc_nums) and desc_nums == sorted(desc_nums, reverse=True)
        and asc[len(asc_nums):] == [""] * (len(asc) - len(asc_nums))
        and desc[len(desc_nums):] == [""] * (len(desc) - len(desc_nums))):
    problems.append("clicking a header does not sort the table as expected")
if width < min_width:
    problems.append(f"the table uses {width:.0%} of the window, expected at least {min_width:.0%}")
if flags < min_flags or (min_flags and not note):
    problems.append(f"expected {min_flags} visible no-person flag(s) and the note, found {flags} (note shown: {note})")
if problems:
    sys.exit("; ".join(problems))
PY
}

check_screenshot() {  # check_screenshot PNG MIN-LEVEL-COLOURS
    "$python" - "$1" "$2" <<'PY'
import sys

import numpy as np
from PIL import Image

shot, min_levels = sys.argv[1], int(sys.argv[2])
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
if len(seen) < min_levels:
    problems.append("level colours missing (histogram/chips not drawn?)")
if problems:
    sys.exit(f"{shot} looks wrong: " + "; ".join(problems))
PY
}

if [ -n "$report" ]; then
    [ -f "$report" ] || { echo "no such report: $report" >&2; exit 1; }
    render "$report" "$shot"
    check_probe "$(probe "$report")" 0 0
    check_screenshot "$shot" 3
else
    make_reports
    stem="${shot%.png}"
    render "$workdir/demo.html" "$shot"
    check_probe "$(probe "$workdir/demo.html")" 0 0
    check_screenshot "$shot" 3
    render "$workdir/thirty.html" "$stem-30.png"
    check_probe "$(probe "$workdir/thirty.html")" 0.9 0
    check_screenshot "$stem-30.png" 3
    render "$workdir/noperson.html" "$stem-noperson.png"
    check_probe "$(probe "$workdir/noperson.html")" 0 1
    check_screenshot "$stem-noperson.png" 2
fi
echo "ok: the report renders"
