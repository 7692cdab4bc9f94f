"""The main job end to end: the papermill template, the driver on a small matrix (kill and resume, a failing
run, a fresh clone's reproduction), the report, and the ImageNet profile's wiring on a tiny generated
ImageFolder with random weights."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from advcl.data import make_tiny_imagefolder
from advcl.experiments import find_file, load_profile, plan_runs
from conftest import BIN, REPO, run

SMOKE = {"name": "smoke", "description": "two rows, a broken one and a proxy", "seeds": [0], "reference": "PGD - SupCon Loss",
         "threat": {"norm": "linf", "eps": 0.1},
         "per_class": {"train": 20, "test": 10, "curve": 5, "autoattack": 2, "analysis": 5, "probe": 10},
         "train": {"dataset": "fashion_mnist", "arch": "small_cnn", "batch_size": 50, "temperature": 0.1, "device": "cpu",
                   "attack": {"steps": 2, "alpha": 0.05}},
         "evaluation": {"attacks": {"pgd": {"kind": "pgd", "steps": 2, "alpha": 0.05}, "sc": {"kind": "sc", "steps": 2, "alpha": 0.05}},
                        "curve_eps": [0, 0.05, 0.1], "curve_steps": 2, "autoattack": True},
         "analysis": {"attack": {"kind": "pgd", "steps": 2, "alpha": 0.05}},
         "proxy": {"arch": "small_cnn", "arch_kwargs": {"width": 8}, "epochs": 1, "data_seed": 1},
         "rows": [{"name": "Clean", "role": "baseline", "epochs": 2},
                  {"name": "PGD - SupCon Loss", "attack": "pgd", "objective": "supcon", "source": "pool", "epochs": 1},
                  {"name": "Broken", "attack": "pgd", "objective": "ce", "source": "online", "arch_kwargs": {"widht": 8}, "paper": False}]}

def test_template_runs_with_its_defaults(tmp_path):
    import papermill as pm
    pm.execute_notebook(str(find_file('template', 'experiment')), str(tmp_path/'run.ipynb'), kernel_name='python3', cwd=str(tmp_path),
                        progress_bar=False)
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert set(m['results']) == {'clean', 'pgd'} and m['results']['clean']['n'] == 50 and m['format'] == 'advcl.run/2'
    assert m['environment']['device_kind'] == 'cpu' and m['curve'][0]['eps'] == 0 and (tmp_path/'outcomes.npz').exists()
    nb = json.loads((tmp_path/'run.ipynb').read_text())
    assert sum(c['cell_type'] == 'code' for c in nb['cells']) <= 5          # parameters (given and injected), one call, two figures
    assert any(o.get('output_type') == 'display_data' for c in nb['cells'] for o in c.get('outputs', []))

def _driver(*args, **kw):
    return subprocess.Popen([str(BIN/'advcl-experiments'), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

def test_driver_resumes_records_failures_and_reports(tmp_path):
    profile = tmp_path/'smoke.json'
    profile.write_text(json.dumps(SMOKE))
    runs = tmp_path/'out'/'smoke'/'runs'
    p = _driver('run', '--profile', profile, '--out', tmp_path/'out')
    t0 = time.time()
    while not (runs/'proxy-s0'/'metrics.json').exists():
        assert p.poll() is None and time.time() - t0 < 300, p.stdout.read() if p.poll() is not None else 'timeout'
        time.sleep(0.1)
    time.sleep(1)
    p.send_signal(signal.SIGKILL); p.wait()
    first = (runs/'proxy-s0'/'metrics.json').stat().st_mtime_ns
    assert not (runs/'pgd-supcon-loss-s0'/'metrics.json').exists()
    again = _driver('run', '--profile', profile, '--out', tmp_path/'out')
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 1, out                                  # the broken row fails, the others finish
    assert '] proxy-s0: skipped' in out and '] broken-s0: failed' in out, out
    assert '[5/5] analysis-s0: blocked in 0 s - needs broken-s0' in out, out   # the analysis waits for every model
    assert (runs/'proxy-s0'/'metrics.json').stat().st_mtime_ns == first   # finished work is not redone
    err = json.loads((runs/'broken-s0'/'error.json').read_text())
    assert "widht" in err['message']
    for r in ('clean-s0', 'pgd-supcon-loss-s0'): assert (runs/r/'metrics.json').exists()
    m = json.loads((runs/'pgd-supcon-loss-s0'/'metrics.json').read_text())['results']['autoattack']
    assert m['n'] == 20 and m['acc'] <= m['robust_after']['apgd-ce'] / 20 <= m['robust_after']['clean'] / 20
    assert not list(runs.rglob('kernel-ipc-*'))                         # no kernel sockets left in the run folders
    only = _driver('run', '--profile', profile, '--out', tmp_path/'out', '--only', 'PGD - SupCon Loss')
    out = only.communicate(timeout=600)[0]
    assert only.returncode == 0 and '[4/4] analysis-s0: done' in out, out   # without the broken row, the analysis runs
    an = json.loads((runs/'analysis-s0'/'metrics.json').read_text())
    assert set(an['transfer']) == set(an['embedding']) == {'Clean', 'PGD - SupCon Loss'} and an['n_test'] == 50
    assert 0 <= an['transfer']['Clean']['PGD - SupCon Loss'] <= 1 and (runs/'analysis-s0'/'projection.png').exists()
    later = plan_runs(load_profile(profile), tmp_path/'out', only=['Broken'])    # another --only keeps the rows done in the analysis
    assert [r.run_id for r in later] == ['proxy-s0', 'clean-s0', 'pgd-supcon-loss-s0', 'broken-s0', 'analysis-s0']
    assert later[-1].needs == ['clean-s0', 'pgd-supcon-loss-s0', 'broken-s0']

    run([BIN/'advcl-experiments', 'report', '--profile', profile, '--out', tmp_path/'out'])
    folder = tmp_path/'out'/'smoke'
    df = pd.read_csv(folder/'results.csv')
    assert list(df.run_id) == ['proxy-s0', 'clean-s0', 'pgd-supcon-loss-s0', 'broken-s0']
    assert list(df.status) == ['done', 'done', 'done', 'failed']
    done = df[df.status == 'done']
    assert done.clean_acc.between(0, 1).all() and done[done.role != 'proxy'].pgd_acc.between(0, 1).all()
    report = (folder/'report.md').read_text()
    for section in ('## Table 1: accuracy', '## Table 2: cross-entropy loss', '## Failed runs', '## Verdicts against the reference',
                    '## How strong the evaluation was', '## Transfer matrix', '## Embedding analysis'):
        assert section in report, section
    line = next(l for l in report.splitlines() if l.startswith('| PGD - SupCon Loss |'))
    acc = df.set_index('run_id').loc['pgd-supcon-loss-s0', 'clean_acc']
    assert f'[{acc:.4f}](runs/pgd-supcon-loss-s0/run.ipynb)' in line and '0.1788' in line   # ours, linked; the paper's beside it
    for link in {l.split('](')[1].split(')')[0] for l in report.split('[')[1:] if '](' in l}:
        assert (folder/link).exists(), link
    assert (folder/'report.html').exists() and (folder/'figures'/'accuracy.png').exists() and (folder/'figures'/'transfer.png').exists()

def test_a_fresh_clone_reproduces_its_runs(tmp_path):
    "Records hold no absolute paths; a folder with records but no weights (a clone) is reproduced in place, not moved aside."
    prof = dict(SMOKE, rows=SMOKE['rows'][:1], reference=None, analysis=None)
    del prof['reference'], prof['analysis']
    (tmp_path/'p.json').write_text(json.dumps(prof))
    run([BIN/'advcl-experiments', 'run', '--profile', tmp_path/'p.json', '--out', tmp_path/'a'])
    shutil.copytree(tmp_path/'a', tmp_path/'clone')
    for f in (tmp_path/'clone').rglob('*.pt'): f.unlink()                  # what git does not hold
    for f in (tmp_path/'clone').rglob('*.json'): assert str(tmp_path) not in f.read_text(), f
    for f in (tmp_path/'clone').rglob('run.ipynb'): assert str(tmp_path) not in json.dumps(json.loads(f.read_text())['metadata']), f
    listed = run([BIN/'advcl-experiments', 'list', '--profile', tmp_path/'p.json', '--out', tmp_path/'clone']).stdout
    assert listed.split() == ['recorded', 'proxy-s0', '(Proxy)', 'recorded', 'clean-s0', '(Clean)'], listed
    out = run([BIN/'advcl-experiments', 'run', '--profile', tmp_path/'p.json', '--out', tmp_path/'clone']).stdout
    assert out.count('reproducing it') == 2 and '_stale' not in out and not (tmp_path/'clone'/'smoke'/'runs'/'_stale').exists(), out
    listed = run([BIN/'advcl-experiments', 'list', '--profile', tmp_path/'p.json', '--out', tmp_path/'clone']).stdout
    assert listed.split()[::3] == ['done', 'done'], listed

def test_a_new_evaluation_keeps_the_training_and_a_new_baseline_retrains_its_rows(tmp_path):
    "An attack added to a profile's evaluation evaluates every model again without training it; a baseline trained anew makes its rows train anew."
    prof = dict(SMOKE, rows=SMOKE['rows'][:2])
    del prof['analysis']
    p, runs = tmp_path/'p.json', tmp_path/'smoke'/'runs'
    def drive(command='run'):
        p.write_text(json.dumps(prof))
        return run([BIN/'advcl-experiments', command, '--profile', p, '--out', tmp_path]).stdout
    record = lambda r: json.loads((runs/r/'metrics.json').read_text())
    drive()
    before = {r: record(r) for r in ('proxy-s0', 'clean-s0', 'pgd-supcon-loss-s0')}
    prof['evaluation'] = dict(prof['evaluation'], attacks=dict(prof['evaluation']['attacks'], pgd5={'kind': 'pgd', 'steps': 5, 'alpha': 0.025}))
    status = lambda: [line.split()[0] for line in drive('list').splitlines()]
    assert status() == ['trained'] * 3
    out = drive()
    assert out.count('evaluating it again, keeping its training') == 3 and not (runs/'_stale').exists(), out
    for r, b in before.items():
        a = record(r)
        assert (a['weights'], a['history'], a['seconds']['train']) == (b['weights'], b['history'], 0), r
        assert a['results']['clean'] == b['results']['clean'] | dict(seconds=a['results']['clean']['seconds']), r
    assert 'pgd5' in record('pgd-supcon-loss-s0')['results'] and record('pgd-supcon-loss-s0')['results']['pgd']['acc'] == before['pgd-supcon-loss-s0']['results']['pgd']['acc']
    assert status() == ['done'] * 3
    prof['rows'] = [dict(prof['rows'][0], epochs=3), prof['rows'][1]]           # the baseline trained anew
    out = drive()
    assert 'clean-s0: finished with other settings' in out and 'pgd-supcon-loss-s0: a model it depends on has changed' in out, out
    row, clean = record('pgd-supcon-loss-s0'), record('clean-s0')
    assert row['inputs']['init'] == clean['weights'] != before['clean-s0']['weights']
    assert row['weights'] != before['pgd-supcon-loss-s0']['weights'] and row['seconds']['train'] > 0 and len(row['history']) == 1
    assert sorted(d.name.rsplit('-', 2)[0] for d in (runs/'_stale').iterdir()) == ['clean-s0', 'pgd-supcon-loss-s0']

def test_only_analyses_the_rows_whose_training_stands(tmp_path):
    "After a change to the evaluation, --only one row re-evaluates it alone; the seed's analysis still covers every model."
    prof = dict(SMOKE, rows=SMOKE['rows'][:2] + [{"name": "PGD - CE Loss", "attack": "pgd", "objective": "ce", "source": "pool", "epochs": 1}])
    del prof['reference']
    p, runs = tmp_path/'p.json', tmp_path/'smoke'/'runs'
    def drive(*args):
        p.write_text(json.dumps(prof))
        return run([BIN/'advcl-experiments', *args, '--profile', p, '--out', tmp_path]).stdout
    drive('run')
    analysed = lambda: sorted(json.loads((runs/'analysis-s0'/'metrics.json').read_text())['models'])
    before, ce = analysed(), (runs/'pgd-ce-loss-s0'/'metrics.json').read_text()
    assert before == ['Clean', 'PGD - CE Loss', 'PGD - SupCon Loss'], before
    prof['evaluation'] = dict(prof['evaluation'], attacks=dict(prof['evaluation']['attacks'], pgd5={'kind': 'pgd', 'steps': 5, 'alpha': 0.025}))
    out = drive('run', '--only', 'PGD - SupCon Loss')
    assert 'pgd-ce-loss-s0' not in out and (runs/'pgd-ce-loss-s0'/'metrics.json').read_text() == ce, out   # neither run nor re-evaluated
    assert analysed() == before and not (runs/'_stale').exists(), out
    assert [l.split()[0] for l in drive('list').splitlines()] == ['done', 'done', 'done', 'trained', 'done']

def test_a_proxy_from_a_file_counts_as_an_input(tmp_path):
    "A profile's proxy.model (a checkpoint no run here makes): its runs stay done while the file is the same, and run anew once it changes."
    from advcl.models import create_classifier, save_checkpoint, weights_digest
    prof = dict(SMOKE, rows=SMOKE['rows'][:1], proxy={'model': 'proxy.pt'})
    del prof['reference'], prof['analysis']
    (tmp_path/'p.json').write_text(json.dumps(prof))
    (tmp_path/'smoke').mkdir()
    def proxy(seed):
        __import__('torch').manual_seed(seed)
        save_checkpoint(tmp_path/'smoke'/'proxy.pt', m := create_classifier('small_cnn', width=8))
        return weights_digest(m)
    drive = lambda: run([BIN/'advcl-experiments', 'run', '--profile', tmp_path/'p.json', '--out', tmp_path]).stdout
    inputs = lambda: json.loads((tmp_path/'smoke'/'runs'/'clean-s0'/'metrics.json').read_text())['inputs']
    first = proxy(0)
    drive()
    assert inputs()['proxy'] == first
    out = drive()
    assert 'clean-s0: skipped' in out and 'has changed' not in out and not (tmp_path/'smoke'/'runs'/'_stale').exists(), out
    second = proxy(1)
    out = drive()
    assert 'clean-s0: a model it depends on has changed' in out and inputs()['proxy'] == second != first, out

def test_bad_input_is_one_line_before_any_work(tmp_path):
    for args, says in [(['run', '--profile', 'nonesuch'], "No profile 'nonesuch'"),
                       (['run', '--set', 'batch_size=abc'], 'batch_size="abc" should be a whole number'),
                       (['run', '--set', 'per_class.tset=5'], 'unknown setting tset'),
                       (['run', '--profile', 'full', '--set', 'device=cuda'] if not __import__('torch').cuda.is_available() else ['run', '--set', 'x=1'],
                        'no GPU here' if not __import__('torch').cuda.is_available() else 'unknown setting x')]:
        res = run([BIN/'advcl-experiments', *args, '--out', tmp_path], check=False)
        assert res.returncode == 2 and res.stderr.count('\n') == 1 and res.stderr.startswith('advcl-experiments: error: ') and says in res.stderr, res.stderr
        assert 'Traceback' not in res.stderr and not list(tmp_path.iterdir())
    res = run([BIN/'advcl-experiments', 'run', '--set', 'batch_size=abc', '--debug', '--out', tmp_path], check=False)
    assert res.returncode == 1 and 'Traceback' in res.stderr
    helped = run([BIN/'advcl-experiments', '--help']).stdout
    assert '(default: quick)' in helped and '--debug' in helped

def test_imagenet_profile_is_wired(tmp_path):
    "The paper's set-up (ResNet-50, ImageFolder data, on-the-fly attacks) on a tiny generated folder with random weights."
    prof = json.loads(find_file('profile', 'imagenet').read_text())
    tiny = make_tiny_imagefolder(tmp_path/'imagenet', n_classes=3, n_per_class=2)
    prof['train'] |= dict(data_root=str(tiny), pretrained=False, batch_size=6, device='cpu', attack={'steps': 1, 'alpha': 0.004})
    prof['evaluation'] |= dict(attacks={k: v | dict(steps=1) for k, v in prof['evaluation']['attacks'].items()}, curve_steps=1,
                               batch_size=6, curve_eps=[0, prof['threat']['eps']])
    prof['proxy'] = {"arch": "test_resnet", "epochs": 1, "data_seed": 0}
    prof['rows'] = [r for r in prof['rows'] if r['name'] in ('Clean', 'SC - SupCon Loss')]
    (tmp_path/'imagenet.json').write_text(json.dumps(prof))
    run([BIN/'advcl-experiments', 'run', '--profile', tmp_path/'imagenet.json', '--out', tmp_path/'out'], timeout=1200)
    run([BIN/'advcl-experiments', 'report', '--profile', tmp_path/'imagenet.json', '--out', tmp_path/'out'])
    df = pd.read_csv(tmp_path/'out'/'imagenet'/'results.csv')
    assert (df.status == 'done').all() and set(df.clean_n.dropna()) == {6}
    m = json.loads((tmp_path/'out'/'imagenet'/'runs'/'sc-supcon-loss-s0'/'metrics.json').read_text())
    assert m['settings']['train']['source'] == 'online' and m['settings']['train']['arch'] == 'resnet50'
    assert set(m['results']) == {'clean', 'pgd', 'sc'}

def _until(cond, proc, timeout=300):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, f"the driver ended before the moment to kill it: {proc.stdout.read()}"
        assert time.time() - t0 < timeout, 'timeout'
        time.sleep(0.05)

def _numbers(folder):
    "Every run's accuracies and losses, by run id."
    return {p.parent.name: {k: (r['acc'], r['loss']) for k, r in json.loads(p.read_text()).get('results', {}).items()}
            for p in sorted((folder/'runs').glob('*/metrics.json'))}

def test_a_kill_in_any_phase_leaves_nothing_that_stops_the_rerun(tmp_path):
    "Killed (with its kernels) while a pool is made, while a model trains, while one is evaluated and while the report is written, the matrix finishes on the next run with the numbers of a run never killed."
    prof = dict(SMOKE, rows=SMOKE['rows'][:2], reference='PGD - SupCon Loss')
    (tmp_path/'p.json').write_text(json.dumps(prof))
    run([BIN/'advcl-experiments', 'run', '--profile', tmp_path/'p.json', '--out', tmp_path/'whole'])
    runs = tmp_path/'killed'/'smoke'/'runs'
    moments = [lambda: (runs/'clean-s0'/'train'/'model.pt').exists() and not (runs/'clean-s0'/'metrics.json').exists(),  # evaluating
               lambda: list((tmp_path/'killed'/'smoke'/'pools').glob('train-*/meta.json')),                  # making the training pool
               lambda: (runs/'pgd-supcon-loss-s0'/'train'/'metrics.jsonl').exists()]                       # training
    for moment in moments:
        p = _driver('run', '--profile', tmp_path/'p.json', '--out', tmp_path/'killed', start_new_session=True)
        _until(moment, p)
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    out = run([BIN/'advcl-experiments', 'run', '--profile', tmp_path/'p.json', '--out', tmp_path/'killed']).stdout
    assert 'error' not in out.lower(), out
    assert _numbers(tmp_path/'killed'/'smoke') == _numbers(tmp_path/'whole'/'smoke')
    p = _driver('report', '--profile', tmp_path/'p.json', '--out', tmp_path/'killed', start_new_session=True)
    _until(lambda: (tmp_path/'killed'/'smoke'/'figures').exists(), p)
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    for out in ('killed', 'whole'): run([BIN/'advcl-experiments', 'report', '--profile', tmp_path/'p.json', '--out', tmp_path/out])
    csv = lambda out: pd.read_csv(tmp_path/out/'smoke'/'results.csv').filter(regex='_acc$|run_id|status')
    pd.testing.assert_frame_equal(csv('killed'), csv('whole'))

def test_two_workers_give_what_one_gives_and_survive_a_dead_worker(tmp_path):
    "A Dask LocalCluster of two workers, one killed while it runs a row: the matrix finishes with the numbers of a sequential run."
    import psutil
    prof = dict(SMOKE, rows=SMOKE['rows'][:2] + [{"name": "PGD - CE Loss (online)", "attack": "pgd", "objective": "ce", "source": "online",
                                                  "epochs": 2, "paper": False}])
    (tmp_path/'p.json').write_text(json.dumps(prof))
    one = ['--profile', tmp_path/'p.json', '--threads', '1']                        # one thread a run: the same rounding in both
    run([BIN/'advcl-experiments', 'run', *one, '--workers', '1', '--out', tmp_path/'seq'])
    p = _driver('run', *one, '--workers', '2', '--out', tmp_path/'par')
    row = (tmp_path/'par'/'smoke'/'runs'/'pgd-supcon-loss-s0').resolve()
    def kernel_of_row():
        for k in psutil.process_iter(['cmdline']):
            try:
                if 'ipykernel' in ' '.join(k.info['cmdline'] or []) and Path(k.cwd()) == row: return k
            except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    _until(lambda: (row/'train'/'metrics.jsonl').exists() and kernel_of_row(), p)
    worker = kernel_of_row().parent()
    assert 'spawn_main' in ' '.join(worker.cmdline())                               # a Dask worker process
    worker.kill()
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0 and 'pgd-supcon-loss-s0: done' in out, out
    assert _numbers(tmp_path/'par'/'smoke') == _numbers(tmp_path/'seq'/'smoke')

def _processes_importing_from(folder):
    import psutil
    def env(p):
        try: return p.environ().get('PYTHONPATH', '')
        except (psutil.NoSuchProcess, psutil.AccessDenied): return ''
    return [p for p in psutil.process_iter() if str(folder) in env(p)]

def test_matrix_benchmark_runs(tmp_path):
    "The matrix benchmark (a measurement, not a test) still runs and writes its record; times are not asserted. Its baseline, from exported files, is stopped when the budget is up, with everything it started."
    (tmp_path/'p.json').write_text(json.dumps(dict(SMOKE, rows=SMOKE['rows'][:2])))
    base = tmp_path/'baseline'; base.mkdir()
    subprocess.run(f"git archive HEAD advcl nbs/_templates profiles | tar -x -C {base}", shell=True, cwd=REPO, check=True)
    run([sys.executable, REPO/'benchmarks'/'matrix.py', '--profile', tmp_path/'p.json', '--workers', '1', '--out', tmp_path/'m.json',
         '--baseline', 'HEAD', '--baseline-profile', 'quick', '--baseline-tree', base, '--budget', '1'])
    rec = json.loads((tmp_path/'m.json').read_text())
    b = rec['baseline']
    assert 'wall_seconds' not in b and 1 <= b['stopped_after_seconds'] < 60 and b['runs'] == 0 and b['profile'] == 'quick'
    assert rec['results'][0]['speedup_over_baseline_at_least'] == round(b['stopped_after_seconds'] / rec['results'][0]['wall_seconds'], 2)
    assert not _processes_importing_from(base)
    assert rec['device_kind'] == 'cpu' and rec['torch'] and rec['git_commit'] and [r['workers'] for r in rec['results']] == [1]
    r = rec['results'][0]
    assert r['runs'] == 4 and r['wall_seconds'] > sum(r['phases'][k] for k in ('train', 'evaluate')) > 0   # the proxy, 2 rows, the analysis
    assert {'evaluate: autoattack', 'evaluate: autoattack: square'} <= set(r['phases'])
    assert r['wall_seconds'] >= r['floor_seconds']['as_run'] == r['notebook_seconds'] > r['own_seconds'] > 0   # one worker: runs in turn
    assert abs(r['idle_worker_seconds'] - (r['wall_seconds'] - r['notebook_seconds'])) < 0.2

def test_the_benchmarks_c2d1335_matrix_still_plans():
    "benchmarks/quick-c2d1335.json, quick's matrix as it was at c2d1335 (the benchmark's like-for-like comparison), loads and plans that matrix."
    p = load_profile(REPO/'benchmarks'/'quick-c2d1335.json')
    runs = plan_runs(p)
    assert [r.role for r in runs].count('row') == 15 and len(runs) == 18        # the proxy, the clean baseline, 15 rows, the analysis
    pgd = next(r for r in runs if r.role == 'baseline').settings.evaluation.attacks['pgd']
    assert (pgd.steps, pgd.alpha, pgd.restarts) == (10, 0.025, 1)
