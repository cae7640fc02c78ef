#!/usr/bin/env bash
# A real browser on `arbor report`'s page, loaded from disk: headless Chromium runs the page's
# script with `#selftest`, which clicks a leaf of the drawn tree; the detail panel must then
# show that node's text. Saves a screenshot of the page.
#   tests/ci/check_report.sh REPORT.html SCREENSHOT.png
set -euo pipefail
html=$(realpath "$1")
shot=$2
browser=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=5000)
dom=$("${browser[@]}" --dump-dom "file://$html#selftest" 2>/dev/null | tr -d '\000')
if ! grep -q 'data-selftest="clicked"' <<<"$dom"; then
    echo "check_report: the page did not open a node's detail after the click" >&2
    exit 1
fi
grep -q '<pre id="detail-text">' <<<"$dom"
grep -q 'id="tree-svg"' <<<"$dom"
[ "$(grep -o '<svg' <<<"$dom" | wc -l)" -ge 9 ] || { echo "check_report: charts missing" >&2; exit 1; }
"${browser[@]}" --window-size=1300,2300 --screenshot="$shot" "file://$html#selftest" >/dev/null 2>&1
[ -s "$shot" ]
echo "check_report: node detail shown after a click; screenshot $shot"
