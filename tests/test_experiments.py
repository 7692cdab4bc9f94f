"""The main job end to end: the papermill template, the driver on a small matrix (kill and resume, a failing
run), the report, and the ImageNet profile's wiring on a tiny generated ImageFolder with random weights."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from advcl.data import make_tiny_imagefolder
from advcl.experiments import find_file, load_profile
from conftest import BIN, REPO, run

SMOKE = {"name": "smoke", "description": "two rows and a proxy", "seeds": [0],
         "common": {"dataset": "fashion_mnist", "n_per_class": 20, "test_per_class": 10, "arch": "small_cnn", "batch_size": 50,
                    "eps": 0.1, "train_alpha": 0.05, "train_steps": 2, "temperature": 0.1,
                    "eval_attacks": {"pgd": {"kind": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 2},
                                     "sc": {"kind": "sc", "eps": 0.1, "alpha": 0.05, "steps": 2}},
                    "curve_eps": [0, 0.05, 0.1], "curve_per_class": 5, "curve_steps": 2, "device": "cpu",
                    "autoattack": {"eps": 0.1, "per_class": 2}},
         "analysis": {"per_class": 5, "train_per_class": 10},
         "proxy": {"arch": "small_cnn", "arch_kwargs": {"width": 8}, "epochs": 1, "data_seed": 1},
         "rows": [{"name": "Clean", "role": "baseline", "epochs": 2},
                  {"name": "PGD - SupCon Loss", "attack": "pgd", "objective": "supcon", "source": "pool", "epochs": 1},
                  {"name": "Broken", "attack": "pgd", "objective": "nonsense", "source": "online", "paper": False}]}

def test_template_runs_with_its_defaults(tmp_path):
    import papermill as pm
    pm.execute_notebook(str(find_file('template', 'experiment')), str(tmp_path/'run.ipynb'), parameters=dict(out_dir=str(tmp_path)),
                        kernel_name='python3', cwd=str(tmp_path), progress_bar=False)
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert set(m['results']) == {'clean', 'pgd'} and m['results']['clean']['n'] == 50
    assert m['environment']['device_kind'] == 'cpu' and m['curve'][0]['eps'] == 0
    assert json.loads((tmp_path/'config.json').read_text())['objective'] == 'ce'

def _driver(*args, **kw):
    return subprocess.Popen([str(BIN/'advcl-experiments'), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

def test_driver_resumes_records_failures_and_reports(tmp_path):
    profile = tmp_path/'smoke.json'
    profile.write_text(json.dumps(SMOKE))
    runs = tmp_path/'out'/'smoke'/'runs'
    p = _driver('run', '--profile', str(profile), '--out', str(tmp_path/'out'))
    t0 = time.time()
    while not (runs/'proxy-s0'/'metrics.json').exists():
        assert p.poll() is None and time.time() - t0 < 300, p.stdout.read() if p.poll() is not None else 'timeout'
        time.sleep(0.1)
    time.sleep(1)
    p.send_signal(signal.SIGKILL); p.wait()
    first = (runs/'proxy-s0'/'metrics.json').stat().st_mtime_ns
    assert not (runs/'pgd-supcon-loss-s0'/'metrics.json').exists()
    again = _driver('run', '--profile', str(profile), '--out', str(tmp_path/'out'))
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 1, out                                  # the broken row fails, the others finish
    assert '[1/5] proxy-s0: skipped' in out and '[4/5] broken-s0: failed' in out, out
    assert '[5/5] analysis-s0: blocked - needs the models of broken-s0' in out, out   # the analysis waits for every model
    assert (runs/'proxy-s0'/'metrics.json').stat().st_mtime_ns == first   # finished work is not redone
    err = json.loads((runs/'broken-s0'/'error.json').read_text())
    assert "Unknown objective 'nonsense'" in err['message']
    for r in ('clean-s0', 'pgd-supcon-loss-s0'): assert (runs/r/'metrics.json').exists()
    m = json.loads((runs/'pgd-supcon-loss-s0'/'metrics.json').read_text())['results']['autoattack']
    assert m['n'] == 20 and m['acc'] <= m['robust_after']['apgd-ce'] / 20 <= m['robust_after']['clean'] / 20
    only = _driver('run', '--profile', str(profile), '--out', str(tmp_path/'out'), '--only', 'PGD - SupCon Loss')
    out = only.communicate(timeout=600)[0]
    assert only.returncode == 0 and '[4/4] analysis-s0: done' in out, out   # without the broken row, the analysis runs
    an = json.loads((runs/'analysis-s0'/'metrics.json').read_text())
    assert set(an['transfer']) == set(an['embedding']) == {'Clean', 'PGD - SupCon Loss'} and an['n_test'] == 50
    assert 0 <= an['transfer']['Clean']['PGD - SupCon Loss'] <= 1 and (runs/'analysis-s0'/'projection.png').exists()

    run([BIN/'advcl-experiments', 'report', '--profile', profile, '--out', tmp_path/'out'])
    folder = tmp_path/'out'/'smoke'
    df = pd.read_csv(folder/'results.csv')
    assert list(df.run_id) == ['proxy-s0', 'clean-s0', 'pgd-supcon-loss-s0', 'broken-s0']
    assert list(df.status) == ['done', 'done', 'done', 'failed']
    done = df[df.status == 'done']
    assert done.clean_acc.between(0, 1).all() and done[done.role != 'proxy'].pgd_acc.between(0, 1).all()
    report = (folder/'report.md').read_text()
    assert '## Table 1: accuracy' in report and '## Table 2: cross-entropy loss' in report and '## Failed runs' in report
    line = next(l for l in report.splitlines() if l.startswith('| PGD - SupCon Loss |'))
    acc = df.set_index('run_id').loc['pgd-supcon-loss-s0', 'clean_acc']
    assert f'[{acc:.4f}](runs/pgd-supcon-loss-s0/run.ipynb)' in line and '0.1788' in line   # ours, linked; the paper's beside it
    for link in {l.split('](')[1].split(')')[0] for l in report.split('[')[1:] if '](' in l}:
        assert (folder/link).exists(), link
    assert (folder/'report.html').exists() and (folder/'figures'/'accuracy.png').exists()
    for section in ('## AutoAttack', '## Which objective is most robust?', '## Transfer matrix', '## Embedding analysis'):
        assert section in report, section
    assert (folder/'figures'/'transfer.png').exists() and 'autoattack_acc' in df

def test_imagenet_profile_is_wired(tmp_path):
    "The paper's set-up (ResNet-50, ImageFolder data, on-the-fly attacks) on a tiny generated folder with random weights."
    prof = load_profile('imagenet')
    tiny = make_tiny_imagefolder(tmp_path/'imagenet', n_classes=3, n_per_class=2)
    eps = prof['common']['eps']
    prof['common'] |= dict(data_root=str(tiny), pretrained=False, batch_size=6, train_steps=1, eval_batch_size=6, curve_eps=[0, eps],
                           curve_steps=1, device='cpu', eval_attacks={k: v | dict(steps=1) for k, v in prof['common']['eval_attacks'].items()})
    prof['proxy'] = {"arch": "test_resnet", "epochs": 1, "data_seed": 0}
    prof['rows'] = [r for r in prof['rows'] if r['name'] in ('Clean', 'SC - SupCon Loss')]
    del prof['path']
    (tmp_path/'imagenet.json').write_text(json.dumps(prof))
    run([BIN/'advcl-experiments', 'run', '--profile', tmp_path/'imagenet.json', '--out', tmp_path/'out'], timeout=1200)
    run([BIN/'advcl-experiments', 'report', '--profile', tmp_path/'imagenet.json', '--out', tmp_path/'out'])
    df = pd.read_csv(tmp_path/'out'/'imagenet'/'results.csv')
    assert (df.status == 'done').all() and set(df.n_test.dropna()) == {6}
    m = json.loads((tmp_path/'out'/'imagenet'/'runs'/'sc-supcon-loss-s0'/'metrics.json').read_text())
    assert m['source'] == 'online' and json.loads((tmp_path/'out'/'imagenet'/'runs'/'sc-supcon-loss-s0'/'config.json').read_text())['arch'] == 'resnet50'
    assert set(m['results']) == {'clean', 'pgd', 'sc'}
