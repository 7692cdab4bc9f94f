"""Where a PGD step's time goes, beside a training step's: torch.profiler tables of `--steps` PGD steps
(`advcl.attacks.projected_gradient` under `attack_mode`, as `pgd` runs it) and of training steps, on the
same model and batch. The README's performance section quotes it.

    .venv/bin/python benchmarks/profile_pgd.py [--arch small_cnn] [--batch-size 256] [--channels-last 1]
"""
import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from advcl.attacks import attack_mode, projected_gradient
from advcl.data import dataset_info
from advcl.models import create_classifier

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='small_cnn'); p.add_argument('--dataset', default='fashion_mnist')
    p.add_argument('--batch-size', type=int, default=256); p.add_argument('--channels-last', type=int, default=1)
    p.add_argument('--steps', type=int, default=10); p.add_argument('--rows', type=int, default=12)
    a = p.parse_args()
    torch.manual_seed(0)
    info = dataset_info(a.dataset)
    model = create_classifier(a.arch, a.dataset, channels_last=bool(a.channels_last))
    x = torch.rand(a.batch_size, info['in_chans'], info['size'], info['size'])
    y = torch.randint(0, info['num_classes'], (a.batch_size,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def training_steps():
        for _ in range(a.steps):
            loss = F.cross_entropy(model(x), y); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    def pgd_steps():
        with attack_mode(model):
            projected_gradient(lambda xa: F.cross_entropy(model(xa), y), x, eps=0.1, alpha=0.025, steps=a.steps)

    for name, fn in [('training steps', training_steps), ('PGD steps', pgd_steps)]:
        fn()                                                     # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof: fn()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print(f"\n{a.steps} {name}: {total / 1e3 / a.steps:.2f} ms per step (profiled)")
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=a.rows))
