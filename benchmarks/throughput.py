"""Throughput of adversarial training's building blocks, as the package runs them: (a) a training step,
(b) one PGD step (forward + input gradient only, `advcl.attacks.projected_gradient`), (c) a full PGD-10
adversarial training step (`advcl.attacks.pgd` then a training step on the adversaries); eager and with
torch.compile, fp32 and bf16 autocast, channels_last or not. Prints one JSON line per setting and writes
the whole record (device, torch version, git commit) to benchmarks/results/throughput-<device>.json.

    .venv/bin/python benchmarks/throughput.py                                  # CPU: small_cnn at 28x28
    python benchmarks/throughput.py --arch resnet50 --dataset imagenet --batch-size 256 --dtypes bf16
"""
import argparse, itertools, json, time
from pathlib import Path

import torch
import torch.nn.functional as F

from advcl.attacks import attack_mode, pgd, projected_gradient
from advcl.core import environment
from advcl.data import dataset_info
from advcl.models import create_classifier


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def _timed(fn, device, warmup, iters):
    "Seconds per call of `fn`, after `warmup` calls."
    for _ in range(warmup): fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters): fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters

def setting(arch, kwargs, dataset, batch_size, device, dtype, channels_last, compiled, warmup, iters, pgd_steps=10):
    "Images per second of a training step, a PGD step and a PGD-10 adversarial training step under one setting."
    torch.manual_seed(0)
    info = dataset_info(dataset)
    n_classes, channels, size = info['num_classes'], info['in_chans'], info['size']
    model = create_classifier(arch, dataset, **kwargs).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    run = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch_size, channels, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, n_classes, (batch_size,), device=device)
    amp = dtype == 'bf16'

    def train_step(xb=x):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(run(xb).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    def pgd_steps_call():      # the attack's own loop, `pgd_steps` steps: forward + gradient with respect to the input only
        with attack_mode(run):  # eval mode, parameters frozen (as `pgd` runs it)
            projected_gradient(lambda xa: F.cross_entropy(run(xa).float(), y), x, eps=0.1, alpha=0.025, steps=pgd_steps, amp=amp)

    def at_step():
        xa = pgd(run, x, y, eps=0.1, alpha=0.025, steps=pgd_steps, amp=amp)
        train_step(xa.contiguous(memory_format=fmt))

    model.train()
    t_train = _timed(train_step, device, warmup, iters)
    t_pgd = _timed(pgd_steps_call, device, max(1, warmup // 2), max(1, iters // 2)) / pgd_steps
    t_at = _timed(at_step, device, max(1, warmup // 2), max(1, iters // 2))
    return dict(arch=arch, kwargs=kwargs, dataset=dataset, input=[channels, size, size], batch_size=batch_size, dtype=dtype, channels_last=channels_last,
                compile=compiled, train_step_images_per_s=round(batch_size / t_train),
                pgd_step_images_per_s=round(batch_size / t_pgd), pgd10_at_step_images_per_s=round(batch_size / t_at),
                pgd_step_over_train_step=round(t_pgd / t_train, 3))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='small_cnn')
    p.add_argument('--kwargs', default='{}', help="architecture keyword arguments, JSON")
    p.add_argument('--dataset', default='fashion_mnist', help="input size and classes: fashion_mnist (1x28x28, 10) or imagenet (3x224x224, 1000)")
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtypes', nargs='*', default=['fp32', 'bf16'])
    p.add_argument('--channels-last', nargs='*', type=int, default=[0, 1], help="0: contiguous, 1: channels_last")
    p.add_argument('--compile', nargs='*', type=int, default=[0, 1], help="0: eager, 1: torch.compile")
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--out', default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    res = dict(benchmark='throughput', note="images/s; a PGD step is one forward + one input-gradient backward; a PGD-10 AT step is "
               "10 PGD steps plus one training step", **environment(device), results=[])
    for dtype, cl, comp in itertools.product(a.dtypes, a.channels_last, a.compile):
        r = setting(a.arch, json.loads(a.kwargs), a.dataset, a.batch_size, device, dtype, bool(cl), bool(comp),
                    a.warmup, a.iters)
        res['results'].append(r)
        print(json.dumps(r), flush=True)
    out = Path(a.out or Path(__file__).parent/'results'/f"throughput-{a.arch}-{res['device_kind']}.json")
    out.write_text(json.dumps(res, indent=1) + '\n')
    print(f"wrote {out}")
