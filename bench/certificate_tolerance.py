"""The certificate's pass/fail tolerance (pipeline.engine.certificate.GAP_RTOL, WALK_SLIVER): how large
``continuity_gap`` is on correct results, relative to the scale ``gap_tol`` is built on.

    PYTHONPATH=. .venv/bin/python bench/certificate_tolerance.py [nets] [models] [tv] [planes] [walk-cost]

Prints, per network, method and dtype, the largest ``gap / scale`` (``scale = (gap_tol -
sliver) / GAP_RTOL[dtype]``), for the walk ``gap / (eps x max|slope|)``, and ``gap / gap_tol``
(what the margin is). ``nets``: tests/nets.py zoo, 8 segments of length 6; ``models``: the
project's VGG8 (8, 16) and ResNet18 k=4 on 1x8x8 inputs (untrained: ResNet18's FixUp init has
outputs of about 3e-7), 4 segments of length 3; ``tv``: torchvision's models on
tests/test_zoo.py's segments (vgg11_bn and densenet121 on half of one); ``planes``: two planes
per network (scale 0.3 for images), certify all and strict. ``walk-cost``: the share of the
walk's time its midpoint certificate takes, VGG8, 32 segments, 3 runs. One torch thread; results in
docs/benchmarks.md ("The certificate's tolerance").
"""

import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, ".")
from pipeline.engine.certificate import GAP_RTOL, WALK_SLIVER  # noqa: E402
from pipeline.inputs.models import build  # noqa: E402
from pipeline.engine.planes import discover_plane  # noqa: E402
from pipeline.engine.lines import discover, prepare  # noqa: E402
from tests.nets import zoo  # noqa: E402

warnings.simplefilter("ignore")
torch.set_num_threads(1)


def report(name, method, dt, res, eps=1e-6):
    tol, sliver, wrel = res.gap_tol, 0.0, float("nan")
    if method == "walk":
        steep = np.array([np.abs(res.regions(i)["slope"]).max() for i in range(res.n_segments)])
        sliver = WALK_SLIVER * eps * steep
        wrel = (res.continuity_gap / (eps * steep)).max()
    scale = (tol - sliver) / GAP_RTOL[dt]
    print(f"{name:14s} {method:9s} {str(dt)[6:]:8s} regions {res.density.sum():6d} "
          f"gap/scale {(res.continuity_gap / scale).max():.2e} gap/(eps*max|slope|) {wrel:.2e} "
          f"gap/tol {(res.continuity_gap / tol).max():.2e}", flush=True)


def seg(shape, n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    d = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    d *= length / torch.linalg.vector_norm(d.flatten(1), dim=1).view(-1, *([1] * len(shape)))
    return x0, x0 + d


def both(name, net, x0, x1):
    for method in ("subdivide", "walk"):
        for dt in (torch.float64, torch.float32):
            report(name, method, dt, discover(net, x0, x1, method=method, dtype=dt, on_certificate="warn"))


def models():
    torch.manual_seed(0)
    vgg = build("vgg8", num_classes=10, in_channels=1, input_size=8, widths=(8, 16)).eval()
    res = build("resnet18", num_classes=10, in_channels=1, k=4, input_size=8).eval()
    return [("vgg8", vgg, (1, 8, 8)), ("resnet18k4", res, (1, 8, 8))]


def main(which):
    if "nets" in which:
        for name, net, shape in zoo():
            both(name, net, *seg(shape, 8, 6.0))
    if "models" in which:
        for name, net, shape in models():
            both(name, net, *seg(shape, 4, 3.0))
    if "tv" in which:
        import tests.test_zoo as tz

        for name in ["resnet18", "alexnet", "densenet121", "mobilenet_v2", "vgg11_bn"]:
            x0, x1 = tz._segments(name)
            if name in ("vgg11_bn", "densenet121"):
                x0, x1 = x0[:1], x0[:1] + 0.5 * (x1[:1] - x0[:1])
            both(name, tz._model(name), x0, x1)
    if "planes" in which:
        for name, net, shape in [*zoo(), *models()]:
            g = torch.Generator().manual_seed(3)
            x0 = torch.randn(2, *shape, generator=g, dtype=torch.float64)
            sc = 1.0 if len(shape) == 1 else 0.3
            x1, x2 = (x0 + sc * torch.randn(2, *shape, generator=g, dtype=torch.float64) for _ in range(2))
            for dt in (torch.float64, torch.float32):
                for cert in ("all", "strict"):
                    p = discover_plane(net, x0, x1, x2, dtype=dt, certify=cert, on_certificate="warn")
                    print(f"plane {name:12s} {str(dt)[6:]:8s} {cert:6s} regions {p.n_regions.sum():6d} "
                          f"gap/scale {(p.continuity_gap / (p.gap_tol / GAP_RTOL[dt])).max():.2e}", flush=True)
    if "walk-cost" in which:  # the midpoint check's share of the walk's time (the machine is shared:
        import pipeline.engine.walk as W  # timing it inside one run is steadier than two runs side by side)

        net = models()[0][1]
        x0, x1 = seg((1, 8, 8), 32, 8.0, seed=1)
        real, spent = W.certify_regions, [0.0]

        def timed(*a, **k):
            t = time.perf_counter()
            out = real(*a, **k)
            spent[0] += time.perf_counter() - t
            return out

        W.certify_regions = timed
        for dt in (torch.float64, torch.float32):
            ready = prepare(net, dt)
            for _ in range(3):
                spent[0] = 0.0
                t = time.perf_counter()
                r = discover(ready, x0, x1, method="walk", dtype=dt)
                total = time.perf_counter() - t
                print(f"walk {str(dt)[6:]}: {total:.3f} s, of which the midpoint check {spent[0]:.3f} s "
                      f"({100 * spent[0] / total:.1f}%), {r.n_regions} regions", flush=True)
        W.certify_regions = real

if __name__ == "__main__":
    main(sys.argv[1:] or ["nets", "models", "tv", "planes", "walk-cost"])
