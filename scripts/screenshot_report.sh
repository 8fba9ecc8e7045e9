#!/usr/bin/env bash
# Render a cnnlab report.html in headless Chromium and save a full-page PNG, so a person can look at the page
# as a browser draws it.
#   usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTH] [HEIGHT]
# Needs Debian's `chromium` package (apt-get install -y chromium); CHROMIUM=/path/to/binary overrides the name.
# HEIGHT defaults to 6000 px: long enough for a typical study; raise it for studies with many configurations.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 4 ]]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2
    exit 2
fi
report=$1
out=$2
width=${3:-1280}
height=${4:-6000}

if [[ ! -f $report ]]; then
    echo "$0: report not found: $report" >&2
    exit 2
fi
browser=${CHROMIUM:-}
if [[ -z $browser ]]; then
    for candidate in chromium chromium-browser google-chrome; do
        if command -v "$candidate" >/dev/null 2>&1; then
            browser=$candidate
            break
        fi
    done
fi
if [[ -z $browser ]]; then
    echo "$0: no Chromium found; install it with: apt-get install -y chromium (or set CHROMIUM=/path/to/binary)" >&2
    exit 2
fi

report_url="file://$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

# --no-sandbox: containers and CI run as root, where Chromium's sandbox cannot start.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size="$width,$height" --screenshot="$out_abs" "$report_url" 2>/dev/null
echo "$out_abs"
