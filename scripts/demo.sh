#!/usr/bin/env bash
# The runner's job on a small scale: deblend ten real HSC blends with a base and a head
# revision of the deblender, compare them and write the report.
#
# Default: base is the scarlet2 0.5.1 release (its sdist from PyPI made into a git
# repository in demo/scarlet2), head a local commit on it, branch demo-pr, that changes
# scarlet2's initialisation as a pull request might: init.from_gaussian_moments starts
# its search for a source's box at 4 PSF widths instead of 6.
# REPO=PATH_OR_URL HEAD=REV BASE=REV runs the same on any scarlet or scarlet2 repository
# (the adapter is detected); DATASET=DIR on another blend set.
# Writes demo/result/result.json and demo/report/ (comment.md, check-run.json,
# report.html); the last line printed is the report's path.
set -euo pipefail
# Paths given relative to where the demo was started from.
for name in REPO DATASET; do
    if [ -d "${!name:-}" ]; then
        printf -v "$name" %s "$(cd "${!name}" && pwd)"
    fi
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
mkdir -p demo

# Ten set1 blends of 2-4 sources, 22-47 px wide: small enough to fit in seconds, and
# among them blends whose models the demo's head changes clearly and blends it leaves
# about as they were.
BLENDS=(
    43160169307177141 43160173602145005 43160199371948564 43160311041098191
    43160448480051480 43160448480051970 43160461364953695 43160465659920726
    43160581624037508 43160731947892901
)
if [ -z "${DATASET:-}" ]; then
    DATASET=demo/set1-demo
    rm -rf "$DATASET"
    mkdir -p "$DATASET"
    for id in "${BLENDS[@]}"; do
        cp "data/hsc/set1/$id.npz" "$DATASET/"
    done
fi

if [ -z "${REPO:-}" ]; then
    REPO=demo/scarlet2
    if [ ! -d "$REPO" ]; then
        .venv/bin/python -m runner release-repo scarlet2==0.5.1 --out "$REPO"
    fi
    if ! git -C "$REPO" rev-parse --verify --quiet demo-pr >/dev/null; then
        git -C "$REPO" checkout --quiet -b demo-pr v0.5.1
        .venv/bin/python - "$REPO/src/scarlet2/init.py" <<'EOF'
import sys
from pathlib import Path

path = Path(sys.argv[1])
old = "magic_number = lambda i: 6.0 if i == 0"
text = path.read_text()
if text.count(old) != 1:
    sys.exit(f"{path}: cannot make the demo's change, {old!r} is not there once")
path.write_text(text.replace(old, "magic_number = lambda i: 4.0 if i == 0"))
EOF
        # Fixed author and dates: the same SHA every time, so its environment is cached.
        GIT_AUTHOR_DATE=2000-01-02T00:00:00Z GIT_COMMITTER_DATE=2000-01-02T00:00:00Z \
            git -C "$REPO" -c user.name=demo -c user.email=demo@localhost commit --quiet -a \
            -m "init: start the Gaussian-moments box search at 4 PSF widths, not 6"
        git -C "$REPO" checkout --quiet main
    fi
    HEAD=demo-pr
    BASE=v0.5.1
elif [ -z "${HEAD:-}" ] || [ -z "${BASE:-}" ]; then
    echo "error: with REPO, give HEAD and BASE too (revisions of REPO)" >&2
    exit 2
fi

rm -rf demo/result demo/report
.venv/bin/python -m runner run --repo "$REPO" --head "$HEAD" --base "$BASE" \
    --dataset "$DATASET" --out demo/result --report demo/report
echo "report: $(pwd)/demo/report/report.html"
