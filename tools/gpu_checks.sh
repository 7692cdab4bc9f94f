#!/usr/bin/env bash
# The checks that need a CUDA machine (see DEVELOPERS.md, "On a CUDA machine"), for one without network access.
# Not yet run on a GPU (only its install step was tried, on a local Python 3.12): expect to fix it on first use.
# Run tools/gpu_prepare.sh first and copy .whl/ and data/ with the working tree; then, there:
#   tools/gpu_checks.sh checks            the `#| cuda` notebook cells (03_attacks, 06_train)       ~2 min
#   tools/gpu_checks.sh bench             benchmarks/throughput.py: small_cnn and ResNet-50           ~5 min
#   tools/gpu_checks.sh full SEED...      the full profile for these seeds (resumes from $OUT's tar)   one seed a call
# Everything it makes goes to $OUT, else ./gpu-out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD ADVCL_DATA=$PWD/data/fashion-mnist PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
advcl() { python3 -c "import sys; from advcl.experiments import main; sys.argv[0] = 'advcl-experiments'; main()" "$@"; }
what=${1:-checks}; shift || true
case "$what" in
  checks)
    for nb in 03_attacks 06_train; do
      ( time nbdev_test --path nbs/$nb.ipynb --flags cuda --do_print ) 2>&1 | tee "$OUT/checks-$nb.log"
    done ;;
  bench)
    python3 benchmarks/throughput.py --batch-size 4096 --warmup 5 --iters 30 --out "$OUT/throughput-small_cnn-cuda.json"
    python3 benchmarks/throughput.py --arch resnet50 --dataset imagenet --batch-size 256 --dtypes bf16 --channels-last 1 \
      --compile 0 1 --warmup 5 --iters 20 --out "$OUT/throughput-resnet50-cuda.json" ;;
  full)
    # A previous call's runs are in $OUT/full.tar.gz; put it at data/full.tar.gz to go on from them.
    [ -f data/full.tar.gz ] && tar -xzf data/full.tar.gz
    ( time advcl run --profile full --seeds "$@" ) 2>&1 | tee "$OUT/full-run.log"
    advcl report --profile full 2>&1 | tail -3
    # Back: records, notebooks and the report, and the weights later rows start from (proxy, clean baseline).
    find reports/full -name '*.pt' \( -name checkpoint.pt -o \( ! -path '*/proxy-s*' ! -path '*/clean-s*' \) \) > /tmp/skip
    tar -czf "$OUT/full.tar.gz" -X /tmp/skip --exclude='reports/full/pools' --exclude='_stale' reports/full
    ls -la "$OUT" ;;
  *) echo "unknown check '$what': use checks, bench or full SEED..." >&2; exit 2 ;;
esac
