#!/usr/bin/env bash
# `tollgate bench` end to end: the binary against the fake upstream, its JSON and CSV, and its
# HTML report rendered in headless Chromium: no console message, and every chart drawn (coloured
# pixels of its lines in each chart's box of a screenshot). Controls prove both checks can fail:
# a page that logs an error is caught, and the same page with its lines removed fails the pixel
# check. Without Chromium (deploy/setup.sh --test installs it) the test is skipped, exit 77.
set -euo pipefail
build=$(cd "${1:?usage: bench_report.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../support/procs.sh"
fail() { echo "FAIL: $*"; exit 1; }

browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done

"$build/tollgate-fake-upstream" --port 0 >"$work/up.out" 2>&1 &
pids+=($!)
url=$(wait_listening "$work/up.out") || fail "the fake upstream did not start"

"$build/tollgate" bench --base-url "$url/v1" --api-key k --model fake-model --model demo-2 \
  --concurrency 1,4 --requests 24 --stream --prompt-tokens 20-40 --max-tokens 16 \
  --price-in 2 --price-out 8 --json "$work/r.json" --csv "$work/r.csv" --html "$work/r.html" \
  >"$work/table.txt" 2>"$work/err.txt" || fail "bench exited $?: $(cat "$work/err.txt")"
cat "$work/table.txt"
grep -q "TTFT ms p50/p90/p99" "$work/table.txt" || fail "no table"
python3 - "$work/r.json" "$work/r.csv" <<'PY' || fail "JSON or CSV"
import csv, json, sys
doc = json.load(open(sys.argv[1]))
runs = doc["runs"]
assert len(runs) == 4, runs
for r in runs:
    assert r["requests"] == 24 and r["succeeded"] == 24, r
    assert r["ttft_ms"]["p50"] > 0 and r["e2e_ms"]["p99"] >= r["e2e_ms"]["p50"], r
    assert r["cost"]["currency"] == "CNY" and r["cost"]["total"] > 0, r
rows = list(csv.DictReader(open(sys.argv[2])))
assert len(rows) == 4 and rows[3]["model"] == "demo-2" and rows[3]["level"] == "4", rows
PY
# Bad usage is refused with a message and status 2, before anything is sent.
refused() {  # expected-message args...
  local want=$1 status=0
  shift
  "$build/tollgate" bench "$@" >/dev/null 2>"$work/bad.txt" || status=$?
  [ "$status" = 2 ] || fail "bench $* exited $status"
  grep -q -- "$want" "$work/bad.txt" || fail "bench $*: $(cat "$work/bad.txt")"
}
echo '[{"conversations": "not a list"}]' >"$work/useless.json"
echo '{"oops"' >"$work/broken.json"
refused "positive integers" --base-url "$url/v1" --model m --concurrency 0
refused "is required" --model m
refused "no folder" --base-url "$url/v1" --model m --json "$work/missing/r.json"
refused "cannot read" --base-url "$url/v1" --model m --dataset "$work/none.json"
refused "not valid JSON" --base-url "$url/v1" --model m --dataset "$work/broken.json"
refused "no usable entry" --base-url "$url/v1" --model m --dataset "$work/useless.json"
refused "base-url" --base-url "http://127.0.0.1:port/v1" --model m

# A ShareGPT-style dataset: the first human turn of each conversation is the prompt.
cat >"$work/sharegpt.json" <<'JSON'
[{"id": "a", "conversations": [{"from": "human", "value": "first question here"}, {"from": "gpt", "value": "an answer of some words"}]},
 {"id": "b", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "second question"}]},
 {"id": "c", "conversations": []}]
JSON
"$build/tollgate" bench --base-url "$url/v1" --model fake-model --requests 4 --dataset "$work/sharegpt.json" \
  --json "$work/ds.json" --quiet >/dev/null 2>&1 || fail "bench with a dataset"
python3 - "$work/ds.json" <<'PY' || fail "dataset run"
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
assert r["succeeded"] == 4, r
# The fake echoes the prompt: the two questions, three and two words, alternate.
assert r["output_tokens"] > 0, r
PY

if [ -z "$browser" ]; then
  echo "SKIP: no Chromium (deploy/setup.sh --test installs it): the HTML report was not rendered"
  exit 77
fi
grep -q "<script" "$work/r.html" && fail "the report has a script"
grep -Eq "(src|href)=\"(https?:)?//" "$work/r.html" && fail "the report loads something from the network"

chrome() { "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
  --force-device-scale-factor=1 --enable-logging=stderr --v=0 "$@"; }

# 1. No console message at all (the report has no script; a failed load or a parse error would log).
chrome --dump-dom "file://$work/r.html" >"$work/dom.html" 2>"$work/console.txt"
grep -q "<svg" "$work/dom.html" || fail "Chromium rendered no SVG"
if grep -q "CONSOLE" "$work/console.txt"; then grep "CONSOLE" "$work/console.txt"; fail "console messages"; fi
sed 's|</body>|<script>console.error("bench-report-control")</script></body>|' "$work/r.html" >"$work/control.html"
chrome --dump-dom "file://$work/control.html" >/dev/null 2>"$work/control.txt"
grep -q "bench-report-control" "$work/control.txt" || fail "the console check cannot see an error"

# 2. Where each chart is: a copy of the page that writes the charts' boxes into itself.
probe='<pre id="boxes"></pre><script>document.getElementById("boxes").textContent=JSON.stringify([...document.querySelectorAll("figure.chart svg")].map(s=>{const r=s.getBoundingClientRect();return {id:s.parentNode.id,x:r.x,y:r.y,w:r.width,h:r.height}}))</script>'
width=1280
sed "s|</body>|$probe</body>|" "$work/r.html" >"$work/probe.html"
chrome --window-size=$width,800 --dump-dom "file://$work/probe.html" 2>/dev/null >"$work/probe-dom.html"
python3 - "$work/probe-dom.html" "$work/boxes.json" <<'PY' || fail "no chart boxes"
import html, json, re, sys
m = re.search(r'<pre id="boxes">(.*?)</pre>', open(sys.argv[1]).read(), re.S)
boxes = json.loads(html.unescape(m.group(1)))
# 4 charts against load, and a TTFT and an E2E distribution per model.
assert len(boxes) == 4 + 2 * 2, boxes
json.dump(boxes, open(sys.argv[2], "w"))
PY
height=$(python3 -c "import json,sys; print(int(max(b['y']+b['h'] for b in json.load(open(sys.argv[1]))))+40)" "$work/boxes.json")

# 3. The screenshot: every chart has its lines (the page and its probe copy lay out the same).
chrome --window-size=$width,"$height" --screenshot="$work/shot.png" "file://$work/probe.html" >/dev/null 2>&1
python3 "$here/png_charts.py" "$work/shot.png" "$work/boxes.json" 300 || fail "a chart is not drawn"
# Control: without its lines (axes, grids and labels kept) the check fails.
python3 -c 'import re,sys; sys.stdout.write(re.sub(r"<g class=\"(series|legend)\">.*?</g>", "", open(sys.argv[1]).read()))' \
  "$work/probe.html" >"$work/blank.html"
chrome --window-size=$width,"$height" --screenshot="$work/blank.png" "file://$work/blank.html" >/dev/null 2>&1
if python3 "$here/png_charts.py" "$work/blank.png" "$work/boxes.json" 300 >/dev/null; then
  fail "the pixel check passes charts without lines"
fi
echo "bench report: ok"
