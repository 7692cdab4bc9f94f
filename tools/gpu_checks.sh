#!/usr/bin/env bash
# The checks that need a CUDA machine (see DEVELOPERS.md, "On a CUDA machine"), for one without network access.
# Run tools/gpu_prepare.sh first and copy .whl/ and data/fashion-mnist/ with the working tree; then, there:
#   tools/gpu_checks.sh checks            the `#| cuda` notebook cells (03_attacks, 06_train)       ~2 min
#   tools/gpu_checks.sh bench             benchmarks/throughput.py: small_cnn and ResNet-50           ~5 min
#   tools/gpu_checks.sh full SECONDS SEED... [-- DRIVER OPTIONS]
#                                         the cuda cells beside the full profile's runs of these seeds, for at most
#                                         SECONDS (0: no limit), then its report (resumes from data/full-records.tar.gz);
#                                         CHECKS=0 leaves the cuda cells out; CHECK_SECONDS (300) bounds each notebook
#   tools/gpu_checks.sh matrix SECONDS [WORKERS...]
#                                         benchmarks/matrix.py on this machine's CPU cores: quick's seed 0 with WORKERS Dask
#                                         workers (default: one per core), then at the commit in .baseline/ until SECONDS
#                                         have passed in all (a baseline stopped then gives a lower bound of the speedup)
# Everything it makes goes to $OUT, else ./gpu-out. ADVCL_PYTHON=path/to/python skips the wheel install (a dry run here).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
PY=${ADVCL_PYTHON:-python3}
if [ -z "${ADVCL_PYTHON:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export ADVCL_DATA=$PWD/data/fashion-mnist PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
advcl() { "$PY" -c "import sys; from advcl.experiments import main; sys.argv[0] = 'advcl-experiments'; main()" "$@"; }
checks() {
  for nb in 03_attacks 06_train; do
    ( time timeout -k 5 "${CHECK_SECONDS:-300}" nbdev_test --path nbs/$nb.ipynb --flags cuda --do_print ) > "$OUT/checks-$nb.log" 2>&1
    echo "checks $nb: exit $? (log $OUT/checks-$nb.log)"
  done
}
what=${1:-checks}; shift || true
case "$what" in
  checks) checks ;;
  bench)
    "$PY" benchmarks/throughput.py --batch-size 4096 --warmup 5 --iters 30 --out "$OUT/throughput-small_cnn-cuda.json"
    "$PY" benchmarks/throughput.py --arch resnet50 --dataset imagenet --batch-size 256 --dtypes bf16 --channels-last 1 \
      --compile 0 1 --warmup 5 --iters 20 --out "$OUT/throughput-resnet50-cuda.json" ;;
  full)
    limit=$1; shift; seeds=(); while [ $# -gt 0 ] && [ "$1" != -- ]; do seeds+=("$1"); shift; done; shift || true
    [ -f data/full-records.tar.gz ] && tar -xzf data/full-records.tar.gz
    chk=
    if [ "${CHECKS:-1}" != 0 ]; then OMP_NUM_THREADS=4 checks > "$OUT/checks.log" 2>&1 & chk=$!; fi
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$OUT/gpu-use.csv" 2>/dev/null &
    smi=$!
    out=$(grep -o -- '--out [^ ]*' <<< "$*" | cut -d' ' -f2); root=${out:-reports}/full
    find "$root" -name model.pt > /tmp/carried 2>/dev/null   # weights brought along (a baseline, say) do not go back
    t0=$(date +%s)
    if [ "$limit" -gt 0 ]; then lim=(timeout -s INT -k 20 "$limit"); else lim=(); fi
    ( time "${lim[@]}" "$PY" -c "import sys; from advcl.experiments import main; sys.argv[0] = 'advcl-experiments'; main()" \
        run --profile full --seeds "${seeds[@]}" "$@" ) > "$OUT/full-run.log" 2>&1
    echo "driver: exit $? after $(( $(date +%s) - t0 )) s"
    sleep 5                                # the driver's workers and kernels end with it
    [ -n "$chk" ] && { wait $chk; cat "$OUT/checks.log"; }     # each notebook has CHECK_SECONDS at most
    kill $smi 2>/dev/null
    advcl report --profile full "$@" 2>&1 | tail -2
    advcl status --profile full --seeds "${seeds[@]}" "$@" 2>&1 | tee "$OUT/full-status.txt" | tail -1
    # Back: the records, notebooks and report (not pools, checkpoints or the weights of rows), then the weights of runs
    # finished here in the plan's order while $OUT stays under 60 MiB and 8 files; a later call can fetch the rest.
    find "$root" -name '*.pt' ! -path '*/proxy-s*' > /tmp/skip
    tar -czf "$OUT/full-records.tar.gz" -X /tmp/skip --exclude="$root/pools" --exclude='_stale' "$root"
    tar -czf "$OUT/logs.tar.gz" -C "$OUT" --remove-files $(cd "$OUT" && ls checks*.log full-run.log gpu-use.csv 2>/dev/null)
    while read -r status id rest; do
      m=$root/runs/$id/train/model.pt
      [ "$status" = done ] && [ -f "$m" ] && [[ $id != proxy-* ]] && ! grep -qx "$m" /tmp/carried || continue
      used=$(du -sb "$OUT" | cut -f1); size=$(stat -c %s "$m")
      [ $(( used + size )) -lt $(( 60 * 1024 * 1024 )) ] && [ "$(ls "$OUT" | wc -l)" -lt 8 ] && cp "$m" "$OUT/$id.pt"
    done < "$OUT/full-status.txt"
    ls -la "$OUT" ;;
  matrix)
    budget=$1; shift; base=$(ls .baseline)
    "$PY" benchmarks/matrix.py --profile quick --seeds 0 --workers "${@:-$(nproc)}" --baseline "$base" \
      --baseline-tree ".baseline/$base" --budget "$budget" --out "$OUT/matrix-quick-cpu.json" ;;
  *) echo "unknown check '$what': use checks, bench, full SECONDS SEED... [-- OPTIONS] or matrix SECONDS [WORKERS...]" >&2; exit 2 ;;
esac
