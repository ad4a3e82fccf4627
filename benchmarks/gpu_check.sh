#!/usr/bin/env bash
# GPU check (issue 15, item 4): the CUDA tests, then benchmarks/gpu_check.py, one table.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--out DIR] [gpu_check.py options]
#
# Meant for one call on a GPU machine with no network and a bare Python (PyTorch,
# numpy, scipy, scikit-image, pandas, matplotlib, PyYAML, pytest): the package runs
# from src/, nibabel comes from a wheel in .whl/ when it is not installed, and the
# modules that mschange imports at module level but the check never calls (SimpleITK,
# torchio) get empty stand-ins when they are missing. On CPU (CI) it runs the CUDA
# tests on the CPU (MSCHANGE_TEST_DEVICE=cpu) and the quick mode of the script.
# Writes DIR/gpu_check.md (the table), DIR/gpu_check.json and DIR/cuda_tests.log.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

device=""
out="$repo/results/gpu_check"
args=()
while (($#)); do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --device=*) device="${1#*=}"; shift ;;
        --out) out="$2"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
if [[ -z "$device" ]]; then
    device=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_env.XXXXXX")
trap 'rm -rf "$work"' EXIT

export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if ! "$PYTHON" -c 'import nibabel' 2>/dev/null; then
    shopt -s nullglob
    wheels=("$repo"/.whl/nibabel-*.whl)
    if ((${#wheels[@]} == 0)); then
        echo "nibabel is not installed and .whl/ holds no nibabel wheel. Here, with pip:" >&2
        echo "  python3 -m pip download --no-deps --only-binary=:all: -d $repo/.whl nibabel==5.4.2" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$work/site" "${wheels[@]}"
    export PYTHONPATH="$work/site:$PYTHONPATH"
    echo "nibabel from ${wheels[*]}"
fi
for module in SimpleITK torchio; do
    if ! "$PYTHON" -c "import $module" 2>/dev/null; then
        mkdir -p "$work/stubs"
        printf '"""Empty stand-in for %s: imported by mschange, never called here."""\n' \
            "$module" >"$work/stubs/$module.py"
        echo "$module is not installed: an empty stand-in is imported instead"
    fi
done
if [[ -d "$work/stubs" ]]; then export PYTHONPATH="$work/stubs:$PYTHONPATH"; fi

# The CUDA tests: on a GPU on it; on CPU the same tests run on the CPU, so they cannot rot.
test_device=cpu
[[ "$device" == cuda* ]] && test_device="$device"
echo "== CUDA tests (tests/test_cuda.py) on $test_device"
set +e
MSCHANGE_TEST_DEVICE="$test_device" "$PYTHON" -m pytest -p no:cacheprovider -q -m cuda \
    "$repo/tests/test_cuda.py" 2>&1 | tee "$out/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
set -e

echo "== benchmarks/gpu_check.py on $device"
check_rc=0
"$PYTHON" "$repo/benchmarks/gpu_check.py" --device "$device" --out "$out" \
    --cuda-tests-log "$out/cuda_tests.log" --cuda-tests-rc "$tests_rc" \
    ${args[@]+"${args[@]}"} || check_rc=$?

if ((tests_rc != 0 || check_rc != 0)); then
    echo "GPU check: CUDA tests exit $tests_rc, gpu_check.py exit $check_rc" >&2
    exit 1
fi
