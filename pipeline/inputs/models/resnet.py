"""ResNet18 (v1) of base width k, without batch norm or max-pool stem, FixUp-style init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class ResNet18(nn.Module):
    """Stem conv3x3 of width k, stages of 2 BasicBlocks of widths k, 2k, 4k, 8k, GAP, fc 8k -> K.

    Initialisation: FixUp without its scalar multipliers and biases; the layers FixUp zeroes
    (second conv of each block, the classifier) are drawn from N(0, 1e-6^2) instead, and the
    first conv of each block uses He's std times L^(-1/2), L the number of residual blocks.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, k: int = 16, input_size: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, k, 3, padding=1, bias=False)
        blocks, c = [], k
        for i, w in enumerate((k, 2 * k, 4 * k, 8 * k)):
            for j in range(2):
                blocks.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)
        n_blocks = len(blocks)
        nn.init.kaiming_normal_(self.stem.weight, mode="fan_out", nonlinearity="relu")
        for b in blocks:
            fan_in = b.conv1.weight[0].numel()
            nn.init.normal_(b.conv1.weight, 0.0, math.sqrt(2.0 / fan_in) * n_blocks ** -0.5)
            nn.init.normal_(b.conv2.weight, 0.0, 1e-6)
            if b.shortcut is not None:
                nn.init.kaiming_normal_(b.shortcut.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc.weight, 0.0, 1e-6)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
