"""Wall time of an experiment matrix as the driver runs it, with 1 and with N Dask workers, beside the same
seeds at an earlier commit, and where the time goes (each run's `seconds` by phase and per evaluation attack,
from its record). Prints JSON and writes benchmarks/results/matrix-<profile>-<device>.json. A measurement,
not a test: run it alone on the machine.

    .venv/bin/python benchmarks/matrix.py --profile quick --seeds 0 --workers 1 2 --baseline c2d1335

On the same work as that commit: `--profile benchmarks/quick-c2d1335.json --baseline-profile quick` (its quick matrix,
16 rows and PGD-10, in today's profile format).

The baseline runs last. On a machine without the repository's history, give its files with `--baseline-tree`
(`tools/gpu_prepare.sh` exports them); with `--budget`, the baseline is stopped when the benchmark has run that long,
and its record says how long it ran: a lower bound of its wall time.
"""
import argparse, json, os, signal, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRIVER = [sys.executable, '-c', 'from advcl.experiments import main; main()']     # `advcl-experiments`, installed or not


def timed(cmd, cwd, env=None, limit=None):
    "Run `cmd`, failing loudly: (its wall seconds, whether it finished). After `limit` seconds it is stopped, with the kernels it started."
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try: out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t0
        os.killpg(p.pid, signal.SIGKILL); p.communicate()       # the driver and its workers; each kernel ends with its parent
        time.sleep(3)
        return wall, False
    if p.returncode: raise SystemExit(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{out[-3000:]}\n{err[-3000:]}")
    return time.perf_counter() - t0, True


def importing_first(folder):
    "The environment that makes Python import advcl from `folder`, before any other copy."
    return dict(PYTHONPATH=os.pathsep.join([str(Path(folder).resolve()), *filter(None, [os.environ.get('PYTHONPATH')])]))


def records(folder):
    "The records (metrics.json) of the finished runs in `folder`, a profile's report folder."
    return list(Path(folder).glob('runs/*/metrics.json'))


def phases(folder):
    "Seconds by phase summed over the runs in `folder` (their records), the evaluation split by attack and AutoAttack by stage."
    total = Counter()
    for m in records(folder):
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
    cmd = [*DRIVER, 'run', '--profile', profile, '--seeds', *seeds, '--workers', workers, '--out', out]
    wall, _ = timed(cmd + (['--threads', threads] if threads else []), REPO, env=importing_first(REPO))
    folder = Path(out)/name_of(profile)
    by_phase = phases(folder)
    return dict(workers=workers, threads=threads or default_threads(workers), wall_seconds=round(wall, 1),
                phases=by_phase, runs=len(records(folder)), **occupancy(folder, workers, wall, by_phase))


def baseline(commit, profile, seeds, out, tree=None, limit=None):
    "The same seeds at `commit`, run with its own driver and templates: from `tree` (its files), else from a git worktree."
    worktree = tree is None
    if worktree:
        tree = Path(tempfile.mkdtemp())/'baseline'
        subprocess.run(['git', 'worktree', 'add', '--detach', str(tree), commit], cwd=REPO, check=True, capture_output=True)
    try:
        wall, finished = timed([*DRIVER, 'run', '--profile', profile, '--seeds', *seeds, '--out', out], tree,
                               env=importing_first(tree), limit=limit)
        return dict(commit=commit, profile=profile, **({'wall_seconds': round(wall, 1)} if finished else {'stopped_after_seconds': round(wall, 1)}),
                    runs=len(records(Path(out)/name_of(profile))))
    finally:
        if worktree: subprocess.run(['git', 'worktree', 'remove', '--force', str(tree)], cwd=REPO, capture_output=True)


def speedups(record):
    "Each result's speedup over the baseline: its wall time over the baseline's, a lower bound where the baseline was stopped."
    b = record.get('baseline', {})
    for r in record['results']:
        if 'wall_seconds' in b: r['speedup_over_baseline'] = round(b['wall_seconds'] / r['wall_seconds'], 2)
        elif 'stopped_after_seconds' in b: r['speedup_over_baseline_at_least'] = round(b['stopped_after_seconds'] / r['wall_seconds'], 2)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--profile', default='quick', help="the profile")
    ap.add_argument('--seeds', nargs='+', default=['0'], help="its seeds to run")
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2], help="numbers of Dask workers to measure")
    ap.add_argument('--threads', type=int, default=None, help="CPU threads per run (default: the cores over the workers)")
    ap.add_argument('--baseline', default=None, help="a commit to measure the same seeds at (its own driver and profile), after the rest")
    ap.add_argument('--baseline-profile', default=None, help="the profile the baseline runs, a name in its profiles/ (default: --profile)")
    ap.add_argument('--baseline-tree', default=None, help="that commit's advcl/, nbs/_templates/ and profiles/, instead of a git worktree")
    ap.add_argument('--budget', type=float, default=None, help="seconds for the whole benchmark: the baseline is stopped when they are up")
    ap.add_argument('--out', default=None, help="the JSON file (default: benchmarks/results/matrix-<profile's name>-<device>.json)")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from advcl.core import environment
    from advcl.experiments import default_threads
    t0 = time.perf_counter()
    record = dict(profile=a.profile, seeds=a.seeds, **environment('cpu'), cpu_count=os.cpu_count(), results=[])
    with tempfile.TemporaryDirectory() as tmp:
        for w in a.workers:
            record['results'].append(current(a.profile, a.seeds, w, a.threads, Path(tmp)/f'w{w}'))
            print(json.dumps(record['results'][-1]), flush=True)
        if a.baseline:
            limit = None if a.budget is None else max(1., a.budget - (time.perf_counter() - t0))
            record['baseline'] = baseline(a.baseline, a.baseline_profile or a.profile, a.seeds, Path(tmp)/'baseline', a.baseline_tree, limit)
            print(json.dumps(record['baseline']), flush=True)
    speedups(record)
    out = Path(a.out or REPO/'benchmarks'/'results'/f"matrix-{name_of(a.profile)}-{record['device_kind']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + '\n')
    print(out)
