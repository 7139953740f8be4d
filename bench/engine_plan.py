"""The plan of ``bench/engine.py``: the networks, the workload fractions, and the sizes and
repeat counts of every section, for the full run and for ``--quick``."""

from __future__ import annotations

NETS = ("vgg8", "resnet18k8", "mlp1024")
N_PATHS = 8  # 8 closed paths x 8 segments = 64 segments
SEED = 0
PUBLISHED = (450, 650)  # regions/s of the published implementation on VGG8 on these 2 cores
SECTIONS = ("census", "throughput", "efficiency", "scheduling", "subdivide", "precision", "naive", "published")


def make_plan(quick: bool) -> dict:
    if quick:
        return {
            "quick": True,
            "frac": {"vgg8": 1 / 64, "resnet18k8": 1 / 256, "mlp1024": 1 / 8},
            "gate": {"per_sample": 3.0, "total": 20.0},
            "census": [{"net": "mlp1024", "n_seg": 8, "batch": 8}, {"net": "vgg8", "n_seg": 1, "batch": 1}],
            "throughput": {"batches": (4,), "dual_batches": (4,), "rounds": 1, "rounds_for": {}},
            "passlevel": {"batches": (4,), "reps": 3},
            "scheduling": [{"net": "vgg8", "batch": 8, "n_seg": 16, "fmax": 1 / 32, "reps": 1}],
            "maxvert": {"net": "vgg8", "batch": 8, "frac": 1 / 32, "values": (512, 4096), "rounds": 1},
            "sub_profile": {"net": "vgg8", "batch": 8},
            "precision": {"nets": ("vgg8",), "batch": 8, "reps": {"vgg8": 1}},
            "naive": {"net": "vgg8", "frac": 1 / 64, "max_level": 14, "time_cap": 10.0},
            "published": {"net": "vgg8", "batches": (16,), "reps": {16: 1}},
        }
    return {
        "quick": False,
        "frac": {"vgg8": 1 / 16, "resnet18k8": 1 / 64, "mlp1024": 1 / 2},
        "gate": {"per_sample": 20.0, "total": 300.0},
        "census": [{"net": "vgg8", "n_seg": 4, "batch": 4, "spread": True},
                   {"net": "mlp1024", "n_seg": 64, "batch": 64},
                   {"net": "resnet18k8", "n_seg": 1, "batch": 1, "spread": True}],
        # rounds of interleaved runs; rounds_for caps the costly (network, batch) groups
        "throughput": {"batches": (1, 4, 16, 64), "dual_batches": (4, 16), "rounds": 3, "extra_rounds": 1,
                       "rounds_for": {"vgg8|64": 2, "resnet18k8|64": 1, "resnet18k8|16": 2}},
        "passlevel": {"batches": (1, 4, 16, 64), "reps": 5},
        "scheduling": [{"net": "vgg8", "batch": 16, "n_seg": 32, "fmax": 1 / 8, "reps": 3},
                       {"net": "mlp1024", "batch": 16, "n_seg": 64, "fmax": 1.0, "reps": 3}],
        "maxvert": {"net": "vgg8", "batch": 16, "frac": 1 / 8, "values": (512, 1024, 4096, 16384), "rounds": 2,
                    "extra_rounds": 1},
        "sub_profile": {"net": "vgg8", "batch": 16},
        "precision": {"nets": ("vgg8", "resnet18k8", "mlp1024"), "batch": 16,
                      "reps": {"vgg8": 3, "resnet18k8": 2, "mlp1024": 3}},
        "naive": {"net": "vgg8", "frac": 1 / 16, "max_level": 20, "time_cap": 120.0},
        "extra_reps": 1,
        "published": {"net": "vgg8", "batches": (16, 64), "reps": {16: 3, 64: 2}},
    }


NET_TITLE = {"vgg8": "VGG8", "resnet18k8": "ResNet18 (k=8)", "mlp1024": "MLP 3072-1024-1024-10"}
