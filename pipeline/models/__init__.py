"""The paper's architectures by name: ``build("vgg8", num_classes=10, in_channels=3)``."""

from __future__ import annotations

from .resnet import ResNet18
from .vgg import VGG8

__all__ = ["build", "MODELS", "VGG8", "ResNet18", "count_parameters"]

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
