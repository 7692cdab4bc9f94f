import os, subprocess, sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def run(cmd, cwd=REPO, timeout=1800, env=None, check=True):
    "Run `cmd` (a list), returning the CompletedProcess; on failure the assertion shows its output."
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if check: assert res.returncode == 0, f"{' '.join(map(str, cmd))} exited {res.returncode}\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    return res

@pytest.fixture
def repo(): return REPO
