"""Execute notebooks in place so that their teaching outputs (tables, plots) are saved, skipping the cells
`nbdev_test` skips by default (`#| slow`, `#| cuda` without a GPU, the export cell) unless named in --flags.

    .venv/bin/python tools/execute_notebooks.py [--flags slow] nbs/03_attacks.ipynb ...   # then: make export
"""
import os, sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.process import NBProcessor

def skip_flags(run=()):
    import torch
    return ({'slow', 'notest'} | (set() if torch.cuda.is_available() else {'cuda'})) - set(run)

def execute(path: Path, run=()):
    nb = NBProcessor(path, process=True).nb                  # parses the #| directives
    flags = skip_flags(run)
    def no_eval(cell):
        if cell.cell_type != 'code': return True
        if 'nbdev_export(' in cell.source: return True
        return bool(flags & set(getattr(cell, 'directives_', {}) or {}))
    cwd = Path.cwd()
    os.chdir(path.parent)
    try: CaptureShell(path).run_all(nb, exc_stop=True, preproc=no_eval)
    finally: os.chdir(cwd)
    raw = read_nb(path)                                       # keep the file's own sources and metadata
    for cell, done in zip(raw.cells, nb.cells):
        if cell.cell_type == 'code':
            cell.outputs, cell.execution_count = done.get('outputs', []), done.get('execution_count')
    write_nb(raw, path)

if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--flags', default='', help="cell flags to run too, comma-separated (e.g. slow)")
    ap.add_argument('notebooks', nargs='+')
    a = ap.parse_args()
    for p in a.notebooks:
        print('executing', p, flush=True)
        execute(Path(p).resolve(), [f for f in a.flags.split(',') if f])
