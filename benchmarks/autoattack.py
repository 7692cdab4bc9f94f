"""The standard AutoAttack on one adversarially trained model, as `advcl.evaluate.autoattack` runs it (its BatchNorm
folded into the convolutions, `advcl.models.fold_batchnorm`) against the same model unfolded, alternating the two
`--repeats` times on the same images: seconds by stage, and whether the two found the same robust images. Prints
JSON and writes benchmarks/results/autoattack-<arch>-<device>.json. A measurement, not a test: run it alone on the machine.

    .venv/bin/python benchmarks/autoattack.py                     # quick's small CNN, PGD-AT, 100 test images
"""
import argparse, json, statistics, tempfile, time
from pathlib import Path
from unittest import mock

import torch

import advcl.evaluate as ev
from advcl.attacks import Attack
from advcl.core import environment
from advcl.data import load_data, to_float_images
from advcl.train import TrainConfig, train


def robust_model(arch, device, epochs):
    "Madry PGD-AT on quick's 2,000-image training subset, from scratch (eps 0.1, PGD-5, step 0.04)."
    data = load_data('fashion_mnist', 'train', n_per_class=200, seed=0)
    cfg = TrainConfig(objective='ce', source='online', mix_clean=False, attack=Attack('pgd', eps=0.1, alpha=0.04, steps=5),
                      arch=arch, epochs=epochs, batch_size=128, lr=0.05, device=device)
    return train(cfg, Path(tempfile.mkdtemp()), data=data, progress=False)[0]


def timed_autoattack(model, x, y, fold):
    "(seconds, {stage: seconds}, robust mask) of one standard AutoAttack, folded or not."
    keep = (lambda m: m) if not fold else ev.fold_batchnorm
    with mock.patch.object(ev, 'fold_batchnorm', keep):
        t0 = time.perf_counter()
        x_adv, counts, stages = ev.autoattack(model, x, y, eps=0.1)
        seconds = time.perf_counter() - t0
    with torch.no_grad(): robust = model.eval()(x_adv).argmax(1) == y
    return seconds, stages, robust


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='small_cnn')
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--n', type=int, default=100, help="test images (10 per class)")
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out', default=None)
    a = p.parse_args()
    torch.manual_seed(0)
    model = robust_model(a.arch, a.device, a.epochs)
    x, y = load_data('fashion_mnist', 'test', n_per_class=a.n // 10, seed=0)
    x, y = to_float_images(x).to(a.device), y.to(a.device)
    runs = {'unfolded': [], 'folded': []}
    for _ in range(a.repeats):
        for name in runs: runs[name].append(timed_autoattack(model, x, y, fold=name == 'folded'))
    median = lambda name: statistics.median(r[0] for r in runs[name])
    result = dict(arch=a.arch, n=len(y), repeats=a.repeats, **environment(a.device),
                  **{name: dict(seconds=[round(r[0], 2) for r in rs], median_seconds=round(median(name), 2),
                                stage_seconds=[{k: round(v, 2) for k, v in r[1].items()} for r in rs],
                                robust=int(rs[0][2].sum())) for name, rs in runs.items()},
                  same_robust_images=all(torch.equal(r[2], runs['unfolded'][0][2]) for rs in runs.values() for r in rs),
                  speedup=round(median('unfolded') / median('folded'), 2))
    print(json.dumps(result, indent=1))
    out = Path(a.out or Path(__file__).parent/'results'/f"autoattack-{a.arch}-{result['device_kind']}.json")
    out.write_text(json.dumps(result, indent=1) + '\n')
