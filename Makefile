# advcl: two commands do everything on a fresh machine.
#   make test     set up (.venv, package, Fashion-MNIST), then run every test (notebooks and pytest)
#   make report   set up, then run the default (quick) experiment matrix on the CPU and write its report
#   make lab      set up, then JupyterLab on nbs/ with the package's kernel (the notebooks are the reference)
# Both are idempotent: the second run skips the set-up.

SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
STAMP := $(VENV)/.advcl-installed
PROFILE ?= quick

# The exact torch/torchvision pair this machine needs is chosen here, not pinned in the package metadata
# (settings.ini asks for ranges). Override with e.g. `make test TORCH_SPEC="torch torchvision"`.
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: test report lab setup data export readme check clean-venv

setup: $(STAMP)

$(STAMP): settings.ini setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@# torchattacks (the reference PGD and AutoAttack) pins an old `requests`, so it comes without its pins.
	$(PY) -m pip install -q --no-deps 'torchattacks>=3.5'
	@touch $@

# Fashion-MNIST: found where advcl looks ($$ADVCL_DATA, /usr/share/datasets/fashion-mnist), else Debian's
# package dataset-fashion-mnist, else torchvision's download.
data: $(STAMP)
	@$(PY) -c "import advcl.data as d; print(d.find_fashion_mnist(download=False))" 2>/dev/null || { \
	  command -v apt-get >/dev/null && { $(SUDO) apt-get install -y -q dataset-fashion-mnist \
	    || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }; }; \
	  $(PY) -c "import advcl.data as d; print(d.find_fashion_mnist(download=True))"; }

test: data
	$(BIN)/pytest tests

report: data
	$(BIN)/advcl-experiments run --profile $(PROFILE)
	$(BIN)/advcl-experiments report --profile $(PROFILE)

lab: data
	$(BIN)/jupyter lab --notebook-dir nbs

# For developers: notebooks -> advcl/, clean notebooks, README.md from nbs/index.ipynb.
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(MAKE) readme

readme: $(STAMP)
	$(BIN)/jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --output-dir . --output README
	@# code cells come out as bare ``` fences: mark them as python
	@awk '/^```/ { if (!inb) { inb = 1; if ($$0 == "```") $$0 = "```python" } else inb = 0 } { print }' README.md > README.md.tmp && mv README.md.tmp README.md

# CI: fails when nbdev_export or nbdev_clean would change a tracked file.
check: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	@git diff --exit-code --stat -- advcl nbs || { echo "nbdev_export / nbdev_clean changed the files above: run 'make export' and commit."; exit 1; }

clean-venv:
	rm -rf $(VENV)
