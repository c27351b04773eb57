"""The one place a ``device`` argument (``"auto"``, ``"cpu"``, ``"cuda[:N]"``) becomes a torch device."""

from __future__ import annotations

import torch

from .errors import ConfigError


def pick_device(device: str | torch.device = "auto", *, who: str = "") -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; ``who`` prefixes the error messages
    (``"train"``, ...).

    Raises
    ------
    ConfigError
        An unknown device string, or ``"cuda"`` on a machine without a CUDA GPU.
    """
    if isinstance(device, torch.device):
        return device
    where = f"{who}: " if who else ""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{where}unknown device {device!r}: use 'auto', 'cpu' or "
                          "'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}device {device!r} was asked for but no CUDA GPU is "
                          "available: use 'auto' (or 'cpu')")
    return dev
