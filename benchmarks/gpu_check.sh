#!/usr/bin/env bash
# One command for a bare GPU machine (H100/H200, CUDA PyTorch and Triton installed, no network):
#
#     bash benchmarks/gpu_check.sh
#
# Stages, each under its own `timeout`, all within 8 minutes (GPU_CHECK_BUDGET_S, default 470 s):
#   env      python, torch, CUDA device, triton versions (fails in GPU mode when CUDA is not visible)
#   install  only if gaussian_mri or a test dependency does not import: pip install --no-index
#            --find-links WHEELS -e .[test] (never the network: PIP_NO_INDEX=1)
#   cuda     pytest -m cuda (GPU against CPU parity, short fits, no-sync fit loops); in GPU mode a
#            skipped CUDA test counts as a failure
#   triton   pytest tests/test_triton_*.py in Triton's interpreter (TRITON_INTERPRET=1, a pytest of its own:
#            the same edge cases as CI; the compiled kernels are compared in the cuda stage)
#   bench    python benchmarks/gpu_bench.py --device cuda --out OUT/gpu_bench.json
# Output folder: $OUT if set, else ./gpu_check_out: gpu_check.json (stages, status, seconds, test
# counts, first failed stage, the benchmark table) and gpu_check.log (everything the stages printed).
# Exit status 0 when every stage passed, else 1.
#
# Rehearsal on a CPU machine: bash benchmarks/gpu_check.sh --device cpu --dry-run
#   (or GPU_CHECK_DEVICE=cpu GPU_CHECK_DRY_RUN=1): CPU device, gpu_bench --quick, the install stage is
#   skipped when the packages import; CUDA tests are then skipped (and that is not a failure).
#
# Preparing the wheel folder on a machine WITH network (same OS/CPU architecture and Python minor
# version as the GPU machine), torch and triton excluded because the GPU machine has them:
#
#     cd GaussianMRI-checkout/..
#     grep -v -E '^\s*(#|$|torch|triton)' GaussianMRI-checkout/gaussian_mri/requirements.txt > reqs.txt
#     python -m pip download -d wheels --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#         -r reqs.txt "pytest>=8" "scikit-image>=0.22" "slicer-core>=5.10" "setuptools>=64" wheel
#
#   (drop the --python-version/--platform flags when the networked machine is the same kind of machine;
#   if a package has no wheel for the platform, `pip wheel -w wheels PKG` builds one.) Copy `wheels/`
#   next to the checkout (../wheels) or point GAUSSIAN_MRI_WHEELS at it.
#
# Environment: PYTHON (interpreter; default .venv/bin/python of the checkout, else python3), OUT,
# GAUSSIAN_MRI_WHEELS, GPU_CHECK_DEVICE, GPU_CHECK_DRY_RUN, GPU_CHECK_BUDGET_S.

set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT" || exit 2

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --budget) BUDGET_S="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (use --device cuda|cpu, --dry-run, --budget S)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || command -v python || echo python3)"; fi

OUTDIR="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUTDIR" || exit 2
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/gpu_check.log"
STAGES="$OUTDIR/.stages.tsv"
: > "$LOG"
: > "$STAGES"
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET_S))
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
unset TRITON_INTERPRET

log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# run_stage NAME BUDGET_S CMD...: runs CMD under timeout min(BUDGET_S, time left - 15 s); records
# name, status (ok | failed | timeout | skipped), rc, seconds, command in the stage table.
run_stage() {
    local name="$1" budget="$2"; shift 2
    local now left limit rc status t_start t_end
    now=$(date +%s); left=$((DEADLINE - now - 15))
    limit=$budget; [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        log "stage $name: skipped, no time left in the ${BUDGET_S} s budget"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "timeout" "124" "0" "not started: budget spent" >> "$STAGES"
        return 124
    fi
    log "stage $name (timeout ${limit} s): $*"
    t_start=$(date +%s)
    timeout -k 10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    t_end=$(date +%s)
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    log "stage $name: $status (rc $rc, $((t_end - t_start)) s)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((t_end - t_start))" "$*" >> "$STAGES"
    return $rc
}

skip_stage() {  # skip_stage NAME REASON
    log "stage $1: skipped ($2)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "skipped" "0" "0" "$2" >> "$STAGES"
}

log "checkout $ROOT, python $PY, device $DEVICE, dry run $DRY_RUN, output $OUTDIR, budget ${BUDGET_S} s"

# ---- env -------------------------------------------------------------------------------------------
run_stage env 30 "$PY" - "$DEVICE" <<'EOF'
import json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    info.update(torch=torch.__version__, cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), n_gpus=torch.cuda.device_count())
except Exception as exc:
    info["torch"] = f"not importable: {exc}"
try:
    import triton
    info["triton"] = triton.__version__
except Exception as exc:
    info["triton"] = f"not importable: {exc}"
import shutil
# Triton builds its kernel launcher with the system C compiler on first use
info["c_compiler"] = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
print("GPU_CHECK_ENV " + json.dumps(info))
if sys.argv[1] == "cuda" and info["c_compiler"] is None and not str(info["triton"]).startswith("not"):
    sys.exit("no C compiler (cc/gcc/clang) on PATH: Triton cannot build its kernel launcher; install gcc or run with GAUSSIAN_MRI_KERNELS=torch")
if sys.argv[1] == "cuda" and not info.get("cuda_available"):
    sys.exit("CUDA is not available to this PyTorch: the GPU checks cannot run (use --device cpu --dry-run to rehearse)")
EOF

# ---- install ---------------------------------------------------------------------------------------
IMPORT_CHECK='import gaussian_mri, pytest, skimage, scipy, SimpleITK, nibabel, h5py, ismrmrd, pydicom, matplotlib, numpy, torch, triton, vtk, slicer; slicer.vtkMRMLScene'
if "$PY" -c "$IMPORT_CHECK" >> "$LOG" 2>&1; then
    skip_stage install "gaussian_mri and the test dependencies import"
else
    WHEELS="${GAUSSIAN_MRI_WHEELS:-}"
    if [ -z "$WHEELS" ]; then
        for d in "$ROOT/../wheels" "$ROOT/wheels"; do [ -d "$d" ] && WHEELS="$d" && break; done
    fi
    if [ "$DRY_RUN" = 1 ] && [ -z "$WHEELS" ]; then
        skip_stage install "dry run: packages missing and no wheel folder; nothing installed"
    elif [ -z "$WHEELS" ] || [ ! -d "$WHEELS" ]; then
        log "stage install: no wheel folder (set GAUSSIAN_MRI_WHEELS or put wheels/ beside the checkout; see the header of this script)"
        printf '%s\t%s\t%s\t%s\t%s\n' install failed 2 0 "no wheel folder" >> "$STAGES"
    else
        NOBI=""
        "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null && NOBI="--no-build-isolation"
        run_stage install 60 "$PY" -m pip install --no-index --find-links "$WHEELS" $NOBI -e ".[test]"
    fi
fi

# ---- tests -----------------------------------------------------------------------------------------
# only the cuda-marked file: collecting the whole suite would import modules that skip themselves on a GPU
# (the interpreter checks, run in the next stage) and count as skipped; -W default: a warning that only a
# GPU library emits is logged, not turned into an error by the suite's filterwarnings
run_stage cuda 200 "$PY" -m pytest -m cuda tests/test_cuda_parity.py -q -rs -W default -p no:cacheprovider --junitxml "$OUTDIR/pytest_cuda.xml"
TRITON_TESTS=$(ls tests/test_triton_*.py 2>/dev/null | tr '\n' ' ')
if [ -n "$TRITON_TESTS" ]; then
    # shellcheck disable=SC2086
    TRITON_INTERPRET=1 run_stage triton 70 "$PY" -m pytest $TRITON_TESTS -q -rs -p no:cacheprovider --junitxml "$OUTDIR/pytest_triton.xml"
else
    skip_stage triton "no tests/test_triton_*.py in this checkout"
fi

# ---- benchmark -------------------------------------------------------------------------------------
BENCH_ARGS=(--device "$DEVICE" --out "$OUTDIR/gpu_bench.json")
[ "$DRY_RUN" = 1 ] && BENCH_ARGS+=(--quick)
run_stage bench 190 "$PY" benchmarks/gpu_bench.py "${BENCH_ARGS[@]}"

# ---- summary ---------------------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - T0 ))
SUMMARY_PY="$PY"
"$SUMMARY_PY" -c 'import json' 2>/dev/null || SUMMARY_PY=python3
"$SUMMARY_PY" - "$OUTDIR" "$DEVICE" "$DRY_RUN" "$TOTAL" "$BUDGET_S" "$ROOT" <<'EOF' >> "$LOG" 2>&1
import json, subprocess, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, device, dry, total, budget, root = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
stages = []
for line in (out / ".stages.tsv").read_text().splitlines():
    name, status, rc, secs, cmd = line.split("\t", 4)
    stages.append({"stage": name, "status": status, "rc": int(rc), "seconds": int(secs), "command": cmd})
env = None
for line in (out / "gpu_check.log").read_text(errors="replace").splitlines():
    if line.startswith("GPU_CHECK_ENV "):
        env = json.loads(line[len("GPU_CHECK_ENV "):])
for st in stages:
    xml = out / f"pytest_{st['stage']}.xml"
    if st["stage"] in ("cuda", "triton") and xml.is_file():
        try:
            suites = ET.parse(xml).getroot()
            suites = [suites] if suites.tag == "testsuite" else list(suites)
            counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            st["tests"] = counts
            # on a GPU, a CUDA test that skipped did not check anything: count it as a failure
            if not dry and device == "cuda" and counts["skipped"] and st["status"] == "ok":
                st["status"] = "failed"
                st["note"] = f"{counts['skipped']} test(s) skipped on the GPU machine"
        except Exception as exc:
            st["tests"] = f"unreadable junit xml: {exc}"
    if st["stage"] in ("cuda", "triton") and st["rc"] == 5:  # pytest: no tests collected
        st["status"], st["note"] = "failed", "no tests collected"
bench = None
if (out / "gpu_bench.json").is_file():
    try:
        b = json.loads((out / "gpu_bench.json").read_text())
        bench = {"table": b.get("table"), "errors": b.get("errors"), "skipped": {k: v.get("skipped") for k, v in b.get("runs", {}).items() if v.get("skipped")}}
        if b.get("errors"):
            next(s for s in stages if s["stage"] == "bench").setdefault("note", "benchmark errors: " + ", ".join(b["errors"]))
    except Exception as exc:
        bench = f"unreadable: {exc}"
try:
    rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", root, "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
except Exception:
    rev, dirty = None, None
failed = [s["stage"] for s in stages if s["status"] in ("failed", "timeout")]
summary = {
    "ok": not failed,
    "first_failed_stage": failed[0] if failed else None,
    "failed_stages": failed,
    "device": device,
    "dry_run": dry,
    "total_s": total,
    "budget_s": budget,
    "git_head": rev,
    "git_dirty": dirty,
    "env": env,
    "stages": stages,
    "bench": bench,
    "files": {"log": "gpu_check.log", "bench": "gpu_bench.json", "junit": [p.name for p in sorted(out.glob("pytest_*.xml"))]},
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print("GPU_CHECK_RESULT ok=%s first_failed_stage=%s total_s=%d" % (summary["ok"], summary["first_failed_stage"], total))
sys.exit(0 if summary["ok"] else 1)
EOF
RC=$?
if [ ! -s "$OUTDIR/gpu_check.json" ]; then  # the summary could not be written by Python: a minimal one
    printf '{"ok": false, "first_failed_stage": "summary", "note": "could not write the summary with %s", "total_s": %s}\n' "$SUMMARY_PY" "$TOTAL" > "$OUTDIR/gpu_check.json"
    RC=1
fi
rm -f "$STAGES"
tail -n 1 "$LOG"
log "results: $OUTDIR/gpu_check.json, log: $LOG"
exit $RC
