#!/usr/bin/env bash
# The one prepared GPU check of hfcn-bench (issue 14): run it once on a fresh GPU machine,
#
#     bash bench/gpu_check.sh OUT_DIR
#
# from the repository root (or anywhere: it finds the root itself). Within a time budget of
# HFCN_GPU_CHECK_BUDGET_S seconds (default 480: 8 minutes) it
#   1. makes a virtual environment under OUT_DIR and installs the project into it;
#   2. builds the CUDA extension (TORCH_CUDA_ARCH_LIST from the device when unset);
#   3. runs `pytest -m cuda`;
#   4. runs `hfcn-bench compare --device cuda --only speed,model` (the op's GB/s against the
#      device's peak, the model's step times), whose compare/roofline.png is the CPU report's
#      roofline against the GPU: every method's and direction's achieved GB/s beside the
#      device-to-device copy bandwidth measured in the same run and the device's peak;
#   5. runs a short `reproduce` grid on the GPU (smoke preset, embedded phantoms);
#   6. when real DDTI is at hand ($HFCN_DDTI_DIR, or ../shared/data/ddti/raw beside the
#      checkout) and at least 240 s are left, trains one fold of `two_stage` with the paper's
#      TransUNet as its segmenter (`segmenter=transunet`: R50 + ViT-B/16 at 224x224, on the GPU;
#      a 4:1 case-level split, seed 0, the size of one of the 5 CV folds; at most 300 s; its
#      metrics.json is kept, and a second run of this script skips it);
#   7. then spends the time left on the whole 224 px `reproduce --table all` grid (Tables 3,
#      4 and 5), then on Table 4 for resnet50, inception_v3, xception and vgg19 (cheapest first); the
#      grid's cells are cached, so a second run of this script resumes it.
# Every log and report goes under OUT_DIR; the venv, the extension cache and the grid's cells go
# under HFCN_GPU_CHECK_WORK (default OUT_DIR/work: point it elsewhere when only the logs should
# come back). The last line printed is one summary line (also in OUT_DIR/summary.txt). Exit
# status: 0 when steps 2-5 ran and passed (the CUDA tests ran rather than skipped, every speed
# target of compare was met), 1 otherwise, 2 for a usage error or no GPU.
#
# Installing: with a torch already importable by python3 (GPU images usually have one) the
# venv sees the system's packages and the project is installed without dependencies, which
# needs no network (python3 may itself be a venv: its site-packages are then added to the new
# venv by a .pth file, since --system-site-packages only reaches the base interpreter's), and
# the imports the checks need are verified; otherwise pip installs ".[test]" from the index.
# HFCN_GPU_CHECK_PYTHON picks another interpreter.
set -uo pipefail

usage() {
  echo "usage: bash bench/gpu_check.sh OUT_DIR   (one GPU check: build, pytest -m cuda, compare, reproduce)" >&2
}
if [ $# -ne 1 ] || [ -z "$1" ]; then usage; exit 2; fi
case "$1" in -h|--help) usage; exit 0 ;; -*) echo "gpu_check: unknown option $1" >&2; usage; exit 2 ;; esac

START=$(date +%s)
BUDGET=${HFCN_GPU_CHECK_BUDGET_S:-480}
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: HFCN_GPU_CHECK_BUDGET_S must be a whole number of seconds, got '$BUDGET'" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${HFCN_GPU_CHECK_PYTHON:-python3}
mkdir -p "$1" || { echo "gpu_check: cannot create $1" >&2; exit 2; }
OUT=$(cd "$1" && pwd)
LOGS="$OUT/logs"
mkdir -p "$LOGS"
WORK=${HFCN_GPU_CHECK_WORK:-$OUT/work}
mkdir -p "$WORK" || { echo "gpu_check: cannot create $WORK" >&2; exit 2; }
declare -A STATUS=()

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "== [$(( $(date +%s) - START )) s] $*"; }
finish() {
  local rc=$1 detail=$2 line
  line="gpu_check: $detail in $(( $(date +%s) - START )) s; logs and reports in $OUT"
  echo "$line" > "$OUT/summary.txt"
  echo "$line"
  exit "$rc"
}
# step NAME SECONDS CMD...: run CMD with its output in logs/NAME.log, at most SECONDS (and never
# past the budget); records ok / failed (rc) / timeout in STATUS[NAME].
step() {
  local name=$1 limit=$2 rc
  shift 2
  local budget_left
  budget_left=$(left)
  [ "$limit" -gt "$budget_left" ] && limit=$budget_left
  if [ "$limit" -lt 5 ]; then STATUS[$name]="skipped(no time)"; say "$name: skipped, the budget is spent"; return 1; fi
  say "$name (at most $limit s): $*"
  timeout --signal=INT --kill-after=5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) STATUS[$name]=ok ;;
    124|137) STATUS[$name]=timeout ;;
    *) STATUS[$name]="failed(rc=$rc)" ;;
  esac
  say "$name: ${STATUS[$name]} (log: logs/$name.log)"
  [ $rc -eq 0 ] || tail -n 5 "$LOGS/$name.log" | sed 's/^/   | /'
  return $rc
}

# --- 0. a GPU, before anything is installed ------------------------------------------------
GPU=""
if command -v nvidia-smi > /dev/null 2>&1; then
  GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -n 1) || GPU=""
fi
if [ -z "$GPU" ] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
  GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))" 2> /dev/null)
fi
if [ -z "$GPU" ]; then
  echo "gpu_check: no CUDA GPU visible (nvidia-smi lists none and torch.cuda.is_available() is False); nothing was run" >&2
  finish 2 "FAILED: no CUDA GPU"
fi
say "GPU: $GPU; budget $BUDGET s; output $OUT"
{ nvidia-smi 2>&1 || true; } > "$LOGS/nvidia-smi.txt"

# --- 1. venv + install ---------------------------------------------------------------------
VENV="$WORK/venv"
if "$PY" -c "import torch" > /dev/null 2>&1; then
  INSTALL=(pip install -q --no-deps --no-build-isolation -e "$ROOT")
  VENV_FLAGS=(--system-site-packages)
else
  INSTALL=(pip install -q -e "$ROOT[test]")
  VENV_FLAGS=()
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv ${VENV_FLAGS[@]+"${VENV_FLAGS[@]}"} "$VENV" > "$LOGS/venv.log" 2>&1 \
    || finish 1 "FAILED: cannot make a venv with $PY (logs/venv.log)"
  if [ ${#VENV_FLAGS[@]} -gt 0 ]; then
    # python3's own site-packages (it may be a venv itself), visible from the new venv.
    "$VENV/bin/python" -c "import sys, sysconfig, pathlib; p = pathlib.Path(sysconfig.get_paths()['purelib']); \
      p.joinpath('gpu_check_parent.pth').write_text(sys.stdin.read())" \
      < <("$PY" -c "import site, sys; print('\n'.join(site.getsitepackages() + [p for p in sys.path if p.endswith('-packages')]))")
  fi
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
step install 240 "${INSTALL[@]}" || finish 1 "FAILED: install (logs/install.log)"
python - > "$LOGS/imports.log" 2>&1 << 'EOF' || finish 1 "FAILED: missing packages after the install: $(tail -n 1 "$LOGS/imports.log")"
import importlib
missing = []
for name in ("torch", "numpy", "lxml", "PIL", "rich", "sklearn", "skops", "pytest", "hypothesis", "ninja", "hfcn_bench.cli"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__})")
print("missing: " + ", ".join(missing) if missing else "all imports ok")
raise SystemExit(1 if missing else 0)
EOF
python - > "$LOGS/environment.txt" 2>&1 << 'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(i, p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", f"{p.multi_processor_count} SMs")
EOF
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || finish 2 "FAILED: torch in the venv sees no CUDA device (logs/environment.txt)"

# --- 2. the CUDA extension -----------------------------------------------------------------
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/cuda; do [ -x "$c/bin/nvcc" ] && export CUDA_HOME=$c && break; done
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(python -c "import torch; p = torch.cuda.get_device_capability(0); print(f'{p[0]}.{p[1]}')")
  export TORCH_CUDA_ARCH_LIST
fi
export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions" HFCN_BUILD_CUDA=1
step build 300 hfcn-bench build --cuda

# --- 3-5. tests, speed, a short grid -------------------------------------------------------
cd "$ROOT"
if [ "${STATUS[build]}" = ok ]; then
  step cuda_tests 150 python -m pytest -m cuda -q -ra -p no:cacheprovider \
    --junitxml "$OUT/cuda_tests.xml"
  if [ "${STATUS[cuda_tests]}" = ok ]; then
    # pytest exits 0 when every test skipped: the CUDA tests must have run.
    ran=$(python -c "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); s = r if r.tag == 'testsuite' else r.find('testsuite'); print(int(s.get('tests')) - int(s.get('skipped')))" "$OUT/cuda_tests.xml" 2> /dev/null || echo 0)
    [ "${ran:-0}" -gt 0 ] || STATUS[cuda_tests]="failed(every CUDA test skipped)"
    [ "${STATUS[cuda_tests]}" = ok ] && STATUS[cuda_tests]="ok(${ran}ran)"
  fi
  step compare 120 hfcn-bench compare --device cuda --threads 1 --only speed,model --out "$OUT/compare"
  if [ "${STATUS[compare]}" = ok ]; then
    # compare exits 0 when it measured; a missed target is in its report.
    missed=$(python -c "import json, sys; r = json.load(open(sys.argv[1])); c = [x['check'] for s in ('op_speed', 'model_cost') for x in (r.get(s) or {}).get('checks', []) if x.get('passed') is False]; print('; '.join(c))" "$OUT/compare/report.json" 2> /dev/null || echo "report.json unreadable")
    [ -n "$missed" ] && STATUS[compare]="targets-missed($missed)"
    [ -s "$OUT/compare/roofline.png" ] || STATUS[compare]="${STATUS[compare]}+no-roofline.png"
  fi
  step reproduce_smoke 90 hfcn-bench reproduce --table 4 --preset smoke --folds 2 --device cuda \
    --engine local --out "$WORK/reproduce-smoke"
else
  for s in cuda_tests compare reproduce_smoke; do STATUS[$s]="skipped(build failed)"; done
fi

DDTI=${HFCN_DDTI_DIR:-}
[ -z "$DDTI" ] && [ -d "$ROOT/../shared/data/ddti/raw" ] && DDTI="$ROOT/../shared/data/ddti/raw"

# --- 6. one fold of two_stage with the paper's TransUNet on real DDTI (issue 25) -----------
TS_RUN="$WORK/two-stage-transunet"
if [ -z "$DDTI" ]; then
  STATUS[two_stage_transunet]="skipped(no DDTI: set HFCN_DDTI_DIR)"
elif [ -f "$TS_RUN/metrics.json" ]; then
  STATUS[two_stage_transunet]="ok(done by an earlier run)"
elif [ "$(left)" -lt 240 ]; then
  STATUS[two_stage_transunet]="skipped(no time)"
else
  step two_stage_transunet 300 hfcn-bench train --data "$DDTI" --label-rule tirads --system two_stage \
    --preset quick --set segmenter=transunet --set frame_size=224,224 --set device=cuda \
    --test-fraction 0.2 --seed 0 --threads 8 --force --out "$TS_RUN"
fi
cp "$TS_RUN/metrics.json" "$OUT/two_stage_transunet_metrics.json" 2> /dev/null || true

# --- 7. the 224 px grid on real DDTI, with whatever time is left (resumable) --------------
if [ -z "$DDTI" ]; then
  STATUS[ddti_grid]="skipped(no DDTI: set HFCN_DDTI_DIR)"
elif [ "${STATUS[build]}" != ok ]; then
  STATUS[ddti_grid]="skipped(build failed)"
else
  GRID="${HFCN_GPU_CHECK_GRID_OUT:-$WORK/reproduce-ddti-224}"
  ENGINE=local
  python -c "import ray" > /dev/null 2>&1 && ENGINE=ray
  # Leave 20 s to write the report of the cells that finished.
  step ddti_grid $(( $(left) - 20 )) hfcn-bench reproduce --table all --preset cpu --folds 5 --label-rule tirads \
    --data "$DDTI" --device cuda --engine "$ENGINE" --workers "${HFCN_GPU_CHECK_WORKERS:-4}" --out "$GRID"
  # Then the paper's other Table-4 backbones, cheapest first (by their FLOPs per 224 px image), so
  # that a short loan still finishes whole rows; the same --out, so the grid's cells are shared.
  for bb in resnet50 inception_v3 xception vgg19; do
    [ "${STATUS[ddti_grid]}" = ok ] && [ "$(left)" -gt 60 ] || break
    step ddti_grid $(( $(left) - 20 )) hfcn-bench reproduce --table 4 --backbones "$bb" --preset cpu --folds 5 \
      --label-rule tirads --data "$DDTI" --device cuda --engine "$ENGINE" --workers "${HFCN_GPU_CHECK_WORKERS:-4}" \
      --out "$GRID"
  done
  done_cells=$(find "$GRID/cells" -mindepth 2 -maxdepth 2 -name metrics.json 2> /dev/null | wc -l)
  all_cells=$(find "$GRID/cells" -mindepth 1 -maxdepth 1 -type d 2> /dev/null | wc -l)
  cp "$GRID/report.md" "$GRID/report.json" "$OUT/" 2> /dev/null || true
  [ "${STATUS[ddti_grid]}" = timeout ] && STATUS[ddti_grid]="partial(run again to resume)"
  STATUS[ddti_grid]="${STATUS[ddti_grid]}:${done_cells}/${all_cells}cells"
fi

# --- summary ---------------------------------------------------------------------------------
RC=0
for s in build cuda_tests compare reproduce_smoke; do case "${STATUS[$s]:-}" in ok|ok\(*) ;; *) RC=1 ;; esac; done
DETAIL=""
for s in install build cuda_tests compare reproduce_smoke two_stage_transunet ddti_grid; do DETAIL+="$s=${STATUS[$s]:-not-run} "; done
[ $RC -eq 0 ] && finish 0 "PASS on $GPU: ${DETAIL% }" || finish 1 "FAILED on $GPU: ${DETAIL% }"
