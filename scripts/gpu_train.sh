#!/usr/bin/env bash
# The GPU job of issue #13 as one command: the paper's Table 6 ResNets (paper-cifar, Sec. 4.2: 64k iterations
# of batch 128 on the 45k/5k split) trained K at a time on one GPU with CUDA graphs, then every run folder
# packed under $OUT so that it comes back from a device machine (at most 8 files of 16 MiB there).
#
#   scripts/gpu_train.sh                      # on the device machine: DATA, OUT and RUNS as below
#   BUDGET=smoke DEVICE=cpu GRAPHS=0 DATA=resnetlab/data/sample/cifar10-sample OUT=/tmp/o scripts/gpu_train.sh
#                                             # the same job end to end on a CPU in seconds (tests/test_reproduce.py)
#   PRINT_ONLY=1 OUT=/tmp/o scripts/gpu_train.sh   # the reproduce command it would run, and nothing else
#
# The device machine starts bare and runs a command for at most 10 minutes, so training stops at
# TRAIN_SECONDS with a checkpoint (SIGTERM: every run saves last.pt) and the packing still happens. Every
# run comes back with its last.pt: a finished run's is the network to publish, an unfinished one's is
# carried back in RUNS next time, and the same command then resumes it (reproduce reuses finished runs and
# continues interrupted ones).
#
# Before the call, here: copy the images into the repo (../shared does not travel) and name them in carry:
#   mkdir -p .data && cp -r ../shared/data/cifar10 .data/      # 46 MB; /.data/ is git-ignored
set -euo pipefail
shopt -s nullglob  # a glob that matches nothing (no run folder yet) is no word, not itself
cd "$(dirname "$0")/.."

# The data path is part of a run's identity (reproduce reuses a run only where it matches), and every run
# trained on the CPUs names ../shared/data/cifar10/train: the same string here lets the finished ones be
# read back with --from instead of trained again. ../shared does not travel, so on the device machine that
# path is made a link to the carried copy in .data/.
SHARED=../shared/data/cifar10/train
DATA=${DATA:-$SHARED}
OUT=${OUT:?set OUT to the folder whose files come back}
RUNS=${RUNS:-runs/gpu/table6}          # carried in again to resume unfinished runs
REPORT=${REPORT:-runs/gpu/table6-report}
BUDGET=${BUDGET:-full}
PARALLEL=${PARALLEL:-5}                # all five nets at once: the GPU is launch-bound at batch 128
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-bf16}
GRAPHS=${GRAPHS:-1}
TRAIN_SECONDS=${TRAIN_SECONDS:-420}
PYTHON=${PYTHON:-python3}
MAX_BYTES=$((16 * 1024 * 1024))
# Finished runs to read instead of training (--from): at the full budget, every committed log folder of a
# finished paper-cifar run (docs/results/paper-cifar-*/summary.json); FROM="" trains everything.
if [ -z "${FROM+set}" ]; then
    FROM=""
    if [ "$BUDGET" = full ]; then
        for d in docs/results/paper-cifar-*/; do [ -f "$d/summary.json" ] && FROM="$FROM ${d%/}"; done
    fi
fi

if [ "$DATA" = "$SHARED" ] && [ ! -d "$DATA" ] && [ -d .data/cifar10/train ]; then
    mkdir -p "$(dirname "$(dirname "$SHARED")")" && ln -sfn "$PWD/.data/cifar10" "$(dirname "$SHARED")"
fi
[ -d "$DATA" ] || { echo "gpu_train: no data at $DATA (copy ../shared/data/cifar10 to .data/ and carry it)" >&2; exit 2; }
mkdir -p "$OUT" "$RUNS" "$REPORT"
export PYTHONUNBUFFERED=1
flags=(--budget "$BUDGET" --data "$DATA" --parallel "$PARALLEL" --device "$DEVICE" --amp "$AMP"
       --out "$REPORT" --runs "$RUNS")
[ "$GRAPHS" = 1 ] && flags+=(--cuda-graphs)
for d in $FROM; do flags+=(--from "$d"); done
if [ "${PRINT_ONLY:-0}" = 1 ]; then echo "reproduce table6 ${flags[*]}"; exit 0; fi
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$REPORT/gpu.txt" || true

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Optional: how many runs the device takes at once (issue #13's K = 1, 2, 4, 8 table), into the report.
if [ "${BENCH_PARALLEL:-0}" = 1 ]; then
    bench=(--procs "${PROCS:-1,2,4,8}" --seconds "${BENCH_SECONDS:-10}" --device "$DEVICE" --amp "$AMP"
           --data "$DATA")
    [ "$GRAPHS" = 1 ] && bench+=(--cuda-graphs)
    for model in ${BENCH_MODELS:-resnet20 resnet56}; do
        "$PYTHON" -m resnetlab bench parallel --model "$model" "${bench[@]}" --json > "$REPORT/parallel-$model.json" \
            2> >(tee -a "$REPORT/bench.log" >&2) || echo "gpu_train: bench parallel $model failed" | tee -a "$REPORT/bench.log"
    done
fi

# Training: stopped at TRAIN_SECONDS with a checkpoint; status 2 then means "interrupted, run again".
status=0
if [ "$TRAIN_SECONDS" -gt 0 ]; then
    set +e
    timeout -s TERM -k 60 "$TRAIN_SECONDS" "$PYTHON" -m resnetlab reproduce table6 "${flags[@]}" 2>&1 \
        | tee "$REPORT/train.log"
    status=${PIPESTATUS[0]}
    set -e
    echo "gpu_train: reproduce exited with status $status" | tee -a "$REPORT/train.log"
fi

# Packing: one archive per run (its weights and logs), one for the report; each must fit what comes back.
for run in "$RUNS"/*/; do
    run=${run%/}; name=$(basename "$run")
    # last.pt either way: a finished run's is the final network, the one that ships (best.pt was picked on
    # the validation images it would be scored on); an unfinished run's is what resumes it.
    files=(config.json metrics.jsonl)
    for f in summary.json last.pt; do [ -f "$run/$f" ] && files+=("$f"); done
    tar -C "$run" -czf "$OUT/$name.tar.gz" "${files[@]}"
done
tar -C "$(dirname "$REPORT")" -czf "$OUT/report.tar.gz" "$(basename "$REPORT")"
for f in "$OUT"/*.tar.gz; do
    size=$(stat -c %s "$f")
    [ "$size" -le "$MAX_BYTES" ] || { echo "gpu_train: $f is $size bytes, over the 16 MiB that come back" >&2; exit 3; }
done
count=$(find "$OUT" -maxdepth 1 -type f | wc -l)
[ "$count" -le 8 ] || { echo "gpu_train: $count files under $OUT; at most 8 come back" >&2; exit 3; }
ls -l "$OUT"
exit "$status"
