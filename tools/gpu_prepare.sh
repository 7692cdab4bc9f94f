#!/usr/bin/env bash
# What a CUDA machine without network access needs from here (see DEVELOPERS.md, "On a CUDA machine"):
#   .whl/               wheels for its Python 3.12: papermill, ipykernel, Dask distributed, nbdev 2 and their needs, torchattacks
#   data/fashion-mnist/ the four Fashion-MNIST IDX files (from Debian's dataset-fashion-mnist)
#   .baseline/COMMIT/   advcl/, nbs/_templates/ and profiles/ at the commit the matrix benchmark compares with
#                       (BASELINE, default c2d1335): that machine has no git history
# All three are git-ignored; copy them to the machine with the working tree. About 40 MB together.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp -d .whl
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
rm -rf .whl && mkdir -p .whl
"${PIP[@]}" papermill ipykernel 'dask[distributed]' nbdev==2.4.7 execnb==0.1.16 fastcore==1.8.18 ghapi==1.0.11
"${PIP[@]}" --no-deps 'torchattacks>=3.5'
# A CUDA image with torch, timm, seaborn and pandas has these already: keep its versions.
for p in attrs build certifi charset_normalizer click idna packaging psutil pygments pyyaml PyYAML requests setuptools six \
         tqdm typing_extensions urllib3 wheel python_dateutil pyproject_hooks jinja2 markupsafe tzdata; do
  rm -f .whl/${p}-*.whl
done
rm -f .whl/debugpy-*.whl .whl/jedi-*.whl .whl/parso-*.whl   # optional for a kernel papermill drives (debugger, completion): 10 MB less
mkdir -p data/fashion-mnist
src=${ADVCL_DATA:-/usr/share/datasets/fashion-mnist}
cp "$src"/*-ubyte.gz data/fashion-mnist/ || { echo "Fashion-MNIST not in $src: make data first" >&2; exit 1; }
baseline=${BASELINE:-c2d1335}
rm -rf .baseline && mkdir -p .baseline/$baseline
git archive "$baseline" advcl nbs/_templates profiles | tar -x -C .baseline/$baseline
du -sh .whl data/fashion-mnist .baseline
