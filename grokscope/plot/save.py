"""Write a figure to a folder in several formats."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure


def save_figure(fig: Figure, folder: str | Path, name: str, *,
                formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[str]:
    """Save ``fig`` as ``folder/name.<fmt>`` for each format; returns the file names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        fig.savefig(folder / f"{name}.{fmt}", dpi=dpi, format=fmt)
        written.append(f"{name}.{fmt}")
    return written
