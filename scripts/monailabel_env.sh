#!/usr/bin/env bash
# Build the separate virtual environment that runs MONAI Label 0.8.5 with this project's bundle.
#
# MONAI Label 0.8.5 cannot share the main environment: it needs numpy<2 and pydicom<3, and it imports
# torchvision, whose only wheel here pairs with torch 2.14.1 (a CUDA build of about 5.5 GB).
#
# Usage: scripts/monailabel_env.sh [VENV_DIR]     (default: <repo>/.venv-monailabel)
# Environment: PYTHON (interpreter that creates the venv, default python3.11).
# Idempotent: a stamp file in VENV_DIR records the pinned set; a matching stamp makes this a no-op.
# Quiet: pip's output goes to VENV_DIR/install.log, whose tail is printed when a step fails.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-$REPO/.venv-monailabel}
PYTHON=${PYTHON:-python3.11}
PINS=(
    monailabel==0.8.5
    torch==2.14.1
    torchvision==0.29.1
    numpy==1.26.4
    pydicom==2.4.4
    monai==1.6.1
)
STAMP=$VENV/.monailabel-env-stamp
LOG=$VENV/install.log
WANT="${PINS[*]} project=$REPO"

if [[ -f $STAMP && $(<"$STAMP") == "$WANT" ]]; then
    exit 0
fi

fail() {
    echo "monailabel_env.sh: $1 failed (venv: $VENV)" >&2
    [[ -f $LOG ]] && tail -n 40 "$LOG" >&2
    exit 1
}

start=$SECONDS
rm -f "$STAMP"
"$PYTHON" -m venv "$VENV" || fail "creating the venv with $PYTHON"
: >"$LOG"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$LOG" 2>&1; }
# torch first: MONAI Label's sam2 dependency is an sdist whose isolated build would install a second
# torch (5.5 GB) just to build; without build isolation it builds against this one (no CUDA extension).
pip install setuptools wheel "${PINS[@]:1}" || fail "pip install ${PINS[*]:1}"
SAM2_BUILD_CUDA=0 pip install --no-build-isolation "${PINS[@]}" || fail "pip install ${PINS[0]}"
# The bundle's configs import `pipeline`; its runtime deps (nibabel, scipy, ignite) come with monai's extras.
pip install --no-deps -e "$REPO" || fail "pip install --no-deps -e $REPO"
"$VENV/bin/python" - >>"$LOG" 2>&1 <<'PY' || fail "import check"
import monai, monailabel, numpy, pydicom, torch, torchvision
import pipeline.networks.nets  # noqa: F401  (the bundle's network_def)

got = {m.__name__: m.__version__ for m in (monailabel, torch, torchvision, numpy, pydicom, monai)}
print("versions:", got)
assert got["monailabel"] == "0.8.5" and got["numpy"] == "1.26.4" and got["pydicom"] == "2.4.4", got
assert got["monai"] == "1.6.1" and got["torch"].startswith("2.14.1") and got["torchvision"].startswith("0.29.1"), got
PY
echo "$WANT" >"$STAMP"
echo "monailabel_env.sh: built $VENV in $((SECONDS - start)) s"
