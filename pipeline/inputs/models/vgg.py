"""VGG8 of the paper (Appendix B): small convolutional widths, average pooling, two FC layers."""

from __future__ import annotations

import torch
from torch import nn


class VGG8(nn.Module):
    """conv3x3 6, 6, avg-pool 2, 16, 16, avg-pool 2, 64, 64, avg-pool 2, fc 120, fc K.

    ``widths`` scales the conv widths; ``pool="max"`` swaps average for max pooling (still
    piecewise linear, and supported by the region engine). He (fan-out) init, zero biases.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                 widths=(6, 16, 64), hidden: int = 120, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        pool_cls = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                       pool_cls(2)]
            c = w
        self.features = nn.Sequential(*layers)
        side = input_size // 2 ** len(widths)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for {len(widths)} pooling stages")
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
