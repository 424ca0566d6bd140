#!/usr/bin/env bash
# Set everything up and run the runner on a synthetic blend set against the scarlet2
# release on PyPI: the run result lands in demo/result/result.json, the PR comment, the
# check run's output and the HTML report (with residual images) in demo/report/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
RELEASE="${RELEASE:-scarlet2==0.5.1}"
mkdir -p demo
.venv/bin/python -m runner synth --out demo/synth --blends "${BLENDS:-8}" --seed 0
if [ ! -d demo/scarlet2 ]; then
    .venv/bin/python -m runner release-repo "$RELEASE" --out demo/scarlet2
fi
TAG="$(git -C demo/scarlet2 describe --tags --abbrev=0)"
.venv/bin/python -m runner run --repo demo/scarlet2 --head "$TAG" --base "$TAG" \
    --dataset demo/synth --out demo/result --report demo/report
