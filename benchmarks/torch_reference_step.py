"""PyTorch reference for one pixel-regularized training step: the step the JAX step is compared with.

Used by `benchmarks/torch_parity.py` (numerical parity) and for the speed comparison in
docs/performance.md. Needs `pip install torch==2.13.0` (CPU build) in the environment; torch is
never a dependency of pixelreg_jax.


Mirrors the published PyTorch implementation of the method (CIFAR-style ResNet with a
7x7 stride-1 stem, no max-pool, stages of stride 1,2,2,2, average pool 4, linear head;
similarity read from the stem and the four stages with running-mean centring and
softmax layer weights; loss = cross-entropy + alpha * arctanh-squared similarity loss;
SGD lr 0.1 momentum 0.9). Random data: it measures compute, not input.

    pip install torch==2.13.0 numpy
    python benchmarks/torch_reference_step.py --arch resnet18 --batch 64 --pairs 16 --steps 10

Prints one JSON line: {"framework": "torch", "ms_per_step": ..., "images_per_sec": ...}.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, blocks, channels=1, width=64, classes=10, beta=0.9):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 7, 1, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layers = []
            for j in range(n):
                layers.append(Block(cin, cout, (1 if i == 0 else 2) if j == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin, classes)
        self.layer_weight = nn.Parameter(torch.zeros(len(blocks) + 1))
        self.running = [torch.zeros(width * 2 ** max(i - 1, 0)) for i in range(len(blocks) + 1)]
        self.beta = beta

    def features(self, x):
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats

    def forward(self, x):
        f = self.features(x)[-1]
        return self.head(F.avg_pool2d(f, 4).flatten(1))

    def similarity(self, a, b):
        fa, fb = self.features(a), self.features(b)
        scores = []
        for i, (x, y) in enumerate(zip(fa, fb)):
            mean = torch.cat([x.detach(), y.detach()]).mean(dim=(0, 2, 3))
            self.running[i] = self.beta * self.running[i] + (1 - self.beta) * mean
            m = self.running[i][:, None, None]
            scores.append(F.cosine_similarity((x - m).flatten(1), (y - m).flatten(1)))
        return (torch.stack(scores, 1) * F.softmax(self.layer_weight, 0)).sum(1)


def atanh_sq(x, y, eps=1e-5):
    return ((torch.log(1 + x + eps) - torch.log(1 - x + eps)
             - torch.log(1 + y + eps) + torch.log(1 - y + eps)) ** 2).mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps the default")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    blocks = [2, 2, 2, 2] if a.arch == "resnet18" else [3, 4, 6, 3]
    model = ResNet(blocks, a.channels, a.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(a.batch, a.channels, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))
    ra = torch.randn(a.pairs, a.channels, a.size, a.size)
    rb = torch.randn(a.pairs, a.channels, a.size, a.size)
    target = torch.randint(-1, 2, (a.pairs,)).float().clamp(-0.999, 0.999)

    def step():
        loss = F.cross_entropy(model(x), y)
        if a.pairs:
            loss = loss + a.alpha * atanh_sq(model.similarity(ra, rb), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    model.train()
    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = (time.perf_counter() - t) / a.steps
    images = a.batch + 2 * a.pairs
    print(json.dumps({"framework": "torch", "arch": a.arch, "batch": a.batch, "pairs": a.pairs,
                      "size": a.size, "width": a.width, "ms_per_step": round(1000 * dt, 2),
                      "images_per_sec": round(images / dt, 1)}))


if __name__ == "__main__":
    main()
