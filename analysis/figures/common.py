"""What the figures share: axis labels, the house style, titles, file names and saving."""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.figure import Figure

from ..config import AnalysisConfig

__all__ = ["LABELS", "style", "group_title", "curve_label", "slug", "save"]

LABELS = {
    "density": "density (regions per path)",
    "density_per_length": "density per unit length",
    "deviation": "absolute deviation (L2 over logits)",
    "total_variation": "total variation (L2 over logits)",
    "effective_density": "effective density (regions weighted by slope jump)",
    "train_error": "train error",
    "test_error": "test error",
    "test_loss": "test loss",
}


def style(fig: Figure) -> Figure:
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
    return fig


def group_title(keys: dict) -> str:
    w = f" (width {keys['width']})" if "width" in keys else ""
    return f"{keys.get('dataset', '')} · {keys.get('model', '')}{w} · paths {keys.get('paths', '')}"


def curve_label(setting, noise, checkpoint, trained="final") -> str:
    text = setting if not noise else f"{setting} p={noise:g}"
    return text if checkpoint == trained else f"{text} ({checkpoint})"


def slug(*parts) -> str:
    """A file name from ``parts`` joined by ``-`` (empty parts left out, odd characters ``_``)."""
    text = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def save(fig: Figure, out: Path, name: str, config: AnalysisConfig) -> list[Path]:
    """Write ``fig`` as ``out/<name>.<fmt>`` for each of ``config.formats``; returns the files."""
    written = []
    for fmt in config.formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        written.append(path)
    return written
