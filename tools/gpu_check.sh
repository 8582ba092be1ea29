#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: install (pip only), the `gpu` tests, timed stage-1 / stage-2 steps.
#
#   tools/gpu_check.sh                    # from a fresh clone: creates .venv (as `make install` does) and runs
#   tools/gpu_check.sh --skip-install     # use $PYTHON (default: .venv's, else python3) as it is (CI without a GPU)
#   TORCH="torch torchvision" tools/gpu_check.sh   # other torch builds (default: the Makefile's pin)
#
# Prints one line per check (PASS / FAIL / SKIP) and exits non-zero when any failed. Without CUDA every CUDA check
# is SKIP and the exit status is 0. Full outputs go to gpu_check.log. Budget: < 8 min on an H100, install included.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TORCH=${TORCH:-torch==2.14.1 torchvision==0.29.1}
LOG=${GPU_CHECK_LOG:-gpu_check.log}
start=$(date +%s)
: > "$LOG"

skip_install=0
args=()
for a in "$@"; do
    if [ "$a" = "--skip-install" ]; then skip_install=1; else args+=("$a"); fi
done

if [ "$skip_install" = 1 ]; then
    # The project's venv when there is one (make install), else python3 from PATH.
    if [ -x "$VENV/bin/python" ]; then PY=${PYTHON:-$VENV/bin/python}; else PY=${PYTHON:-python3}; fi
    printf '%-4s  %-44s %6.1fs  %s\n' SKIP "install" 0 "--skip-install: using $PY"
else
    PY="$VENV/bin/python"
    if [ -f "$VENV/.installed" ] || [ -f "$VENV/.gpu_check_installed" ]; then
        printf '%-4s  %-44s %6.1fs  %s\n' PASS "install" 0 "$VENV already installed"
    else
        # The Makefile's pattern, without the heavy deploy runtimes: onnx + onnxruntime are enough for the export check.
        deploy=$(grep -E '^(onnx|onnxruntime)==' requirements-deploy.txt | tr '\n' ' ')
        # shellcheck disable=SC2086
        if { test -x "$PY" || python3 -m venv "$VENV"; } >>"$LOG" 2>&1 \
            && "$PY" -m pip install --quiet $TORCH >>"$LOG" 2>&1 \
            && "$PY" -m pip install --quiet -r requirements.txt -r requirements-dev.txt $deploy >>"$LOG" 2>&1 \
            && "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >>"$LOG" 2>&1; then
            touch "$VENV/.gpu_check_installed"
            printf '%-4s  %-44s %6.1fs  %s\n' PASS "install" "$(( $(date +%s) - start ))" "$TORCH, requirements, onnx"
        else
            printf '%-4s  %-44s %6.1fs  %s\n' FAIL "install" "$(( $(date +%s) - start ))" "pip failed: see $LOG"
            exit 1
        fi
    fi
fi

"$PY" tools/gpu_check.py --python "$PY" --log "$LOG" "${args[@]}"
status=$?
echo "gpu_check.sh: $(( $(date +%s) - start ))s in all; full outputs in $LOG"
exit $status
