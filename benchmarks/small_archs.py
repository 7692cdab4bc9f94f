"""Speed and accuracy of the small 28x28 architectures on Fashion-MNIST: the measurement behind the default
in nbs/01_models.ipynb. Prints JSON and writes it to benchmarks/results/.

    .venv/bin/python benchmarks/small_archs.py --epochs 6
"""
import argparse, json, time
from pathlib import Path

import torch
import torch.nn.functional as F

from advcl.data import load_data, TensorLoader
from advcl.models import create_classifier
from advcl.core import environment

CANDIDATES = {'small_cnn-w16': ('small_cnn', dict(width=16)), 'small_cnn-w24': ('small_cnn', dict(width=24)),
              'resnet_small-w16': ('resnet_small', dict(width=16)), 'resnet_small-w32': ('resnet_small', dict(width=32))}

def run(name, epochs, n_per_class, device):
    arch, kw = CANDIDATES[name]
    torch.manual_seed(0)
    model = create_classifier(arch, **kw).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train = TensorLoader(*load_data('fashion_mnist', 'train', n_per_class=n_per_class), 128, shuffle=True, device=device)
    test = TensorLoader(*load_data('fashion_mnist', 'test'), 1000, device=device)
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); seen += len(x)
    train_s = time.perf_counter() - t0
    model.eval(); correct, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for x, y in test: correct += (model(x).argmax(1) == y).sum().item()
    eval_s = time.perf_counter() - t0
    return dict(name=name, arch=arch, kwargs=kw, params=sum(p.numel() for p in model.parameters()),
                train_images_per_s=round(seen / train_s), eval_images_per_s=round(len(test.x) / eval_s),
                test_accuracy=correct / len(test.x))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--n-per-class', type=int, default=1000)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--archs', nargs='*', default=list(CANDIDATES))
    p.add_argument('--out', default=None)
    a = p.parse_args()
    res = dict(benchmark='small_archs', epochs=a.epochs, n_per_class=a.n_per_class, optimizer='SGD lr 0.05 momentum 0.9 wd 5e-4, batch 128',
               **environment(a.device), results=[])
    for name in a.archs:
        res['results'].append(run(name, a.epochs, a.n_per_class, a.device))
        print(json.dumps(res['results'][-1]), flush=True)
    out = Path(a.out or Path(__file__).parent/'results'/f"small_archs-{res['device_kind']}.json")
    out.write_text(json.dumps(res, indent=1) + '\n')
    print(json.dumps(res, indent=1))
