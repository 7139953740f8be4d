"""The paper's architectures by name: ``build("vgg8", num_classes=10, in_channels=3)``."""

from __future__ import annotations

from .resnet import ResNet18
from .vgg import VGG8

__all__ = ["build", "MODELS", "VGG8", "ResNet18", "count_parameters", "summary"]

MODELS = {"vgg8": VGG8, "resnet18": ResNet18}


def build(name: str, **kwargs):
    """Instantiate a registered model; unknown names are an error listing the known ones."""
    try:
        cls = MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return cls(**kwargs)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(model) -> str:
    """One line per parameterised layer and the total parameter count."""
    lines = [type(model).__name__]
    for name, m in model.named_modules():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        if own:
            lines.append(f"  {name:<28} {type(m).__name__:<10} {tuple(m.weight.shape)!s:<22} {own:>10,}")
    lines.append(f"  total parameters: {count_parameters(model):,}")
    return "\n".join(lines)
