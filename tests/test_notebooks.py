"The notebooks are the source and the reference implementation: every test cell in each one runs here."
import pytest
from conftest import REPO, BIN, run

NOTEBOOKS = sorted(p for p in (REPO/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))

def test_there_are_notebooks(): assert len(NOTEBOOKS) >= 3

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(nb): run([BIN/'nbdev_test', '--path', nb, '--do_print'])
