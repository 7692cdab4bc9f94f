"""Wall time of an experiment matrix as the driver runs it, with 1 and with N Dask workers, beside the same
seeds at an earlier commit, and where the time goes (each run's `seconds` by phase and per evaluation attack,
from its record). Prints JSON and writes benchmarks/results/matrix-<profile>-<device>.json. A measurement,
not a test: run it alone on the machine.

    .venv/bin/python benchmarks/matrix.py --profile quick --seeds 0 --workers 1 2 --baseline c2d1335
"""
import argparse, json, os, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd, cwd, env=None):
    "Run `cmd`, failing loudly; its wall seconds."
    t0 = time.perf_counter()
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if res.returncode: raise SystemExit(f"{' '.join(map(str, cmd))} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def phases(folder):
    "Seconds by phase summed over the runs in `folder` (their records), the evaluation split by attack and AutoAttack by stage."
    total = Counter()
    for m in Path(folder).glob('runs/*/metrics.json'):
        rec = json.loads(m.read_text())
        for phase, s in rec.get('seconds', {}).items(): total[phase] += s
        for name, r in rec.get('results', {}).items():
            total[f'evaluate: {name}'] += r.get('seconds', 0)
            for stage, s in r.get('stage_seconds', {}).items(): total[f'evaluate: {name}: {stage}'] += s
    return {k: round(v, 1) for k, v in sorted(total.items())}


def occupancy(folder, workers, wall, phases):
    """How the workers' time was spent: in the runs' notebooks (papermill's record of each), in the runs' own work (the
    records' phases, from `phases`), and neither (idle, or starting). `floor_seconds`: the wall time no order of these runs can beat on
    `workers` workers, with each notebook's overhead (kernel, imports, plots) kept and dropped."""
    nbs = [json.loads(n.read_text())['metadata']['papermill'] for n in Path(folder).glob('runs/*/run.ipynb')]
    notebooks = sum(m['duration'] for m in nbs)
    own = sum(s for k, s in phases.items() if ':' not in k)                # the phases themselves, not their parts
    return dict(notebook_seconds=round(notebooks, 1), own_seconds=round(own, 1),
                idle_worker_seconds=round(workers * wall - notebooks, 1),
                floor_seconds=dict(as_run=round(notebooks / workers, 1), without_overhead=round(own / workers, 1)))


def name_of(profile):
    "The report folder's name of `profile` (a name, or a path to a profile JSON)."
    return json.loads(Path(profile).read_text())['name'] if str(profile).endswith('.json') else profile


def current(profile, seeds, workers, threads, out):
    cmd = [BIN/'advcl-experiments', 'run', '--profile', profile, '--seeds', *seeds, '--workers', workers, '--out', out]
    wall = timed(cmd + (['--threads', threads] if threads else []), REPO)
    folder = Path(out)/name_of(profile)
    by_phase = phases(folder)
    return dict(workers=workers, threads=threads or default_threads(workers), wall_seconds=round(wall, 1),
                phases=by_phase, runs=len(list(folder.glob('runs/*/metrics.json'))), **occupancy(folder, workers, wall, by_phase))


def baseline(commit, profile, seeds, out):
    "The same seeds at `commit`, from a git worktree, run with its own driver and templates."
    tree = Path(tempfile.mkdtemp())/'baseline'
    subprocess.run(['git', 'worktree', 'add', '--detach', str(tree), commit], cwd=REPO, check=True, capture_output=True)
    try:
        cmd = [sys.executable, '-c', 'from advcl.experiments import main; main()', 'run', '--profile', profile, '--seeds', *seeds, '--out', out]
        wall = timed(cmd, tree, env=dict(PYTHONPATH=str(tree)))
        return dict(commit=commit, wall_seconds=round(wall, 1), runs=len(list((Path(out)/name_of(profile)).glob('runs/*/metrics.json'))))
    finally: subprocess.run(['git', 'worktree', 'remove', '--force', str(tree)], cwd=REPO, capture_output=True)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--profile', default='quick', help="the profile")
    ap.add_argument('--seeds', nargs='+', default=['0'], help="its seeds to run")
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2], help="numbers of Dask workers to measure")
    ap.add_argument('--threads', type=int, default=None, help="CPU threads per run (default: the cores over the workers)")
    ap.add_argument('--baseline', default=None, help="a commit to measure the same seeds at (its own driver and profile)")
    ap.add_argument('--out', default=None, help="the JSON file (default: benchmarks/results/matrix-<profile>-<device>.json)")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from advcl.core import environment
    from advcl.experiments import default_threads
    record = dict(profile=a.profile, seeds=a.seeds, **environment('cpu'), cpu_count=os.cpu_count(), results=[])
    with tempfile.TemporaryDirectory() as tmp:
        if a.baseline:
            record['baseline'] = baseline(a.baseline, a.profile, a.seeds, Path(tmp)/'baseline')
            print(json.dumps(record['baseline']), flush=True)
        for w in a.workers:
            record['results'].append(current(a.profile, a.seeds, w, a.threads, Path(tmp)/f'w{w}'))
            print(json.dumps(record['results'][-1]), flush=True)
    out = Path(a.out or REPO/'benchmarks'/'results'/f"matrix-{a.profile}-{record['device_kind']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + '\n')
    print(out)
