"""Execute notebooks in place so that their teaching outputs (tables, plots) are saved, skipping the cells
`nbdev_test` skips by default (`#| slow`, `#| cuda` without a GPU, the export cell).

    .venv/bin/python tools/execute_notebooks.py nbs/03_attacks.ipynb ...   # then: make export
"""
import os, sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.process import NBProcessor

def skip_flags():
    import torch
    return {'slow', 'notest'} | (set() if torch.cuda.is_available() else {'cuda'})

def execute(path: Path):
    nb = NBProcessor(path, process=True).nb                  # parses the #| directives
    flags = skip_flags()
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
    for p in sys.argv[1:]:
        print('executing', p, flush=True)
        execute(Path(p).resolve())
