"""Helpers that write fake foreign checkpoint folders/files for the importer tests.

Each writer takes a list of state dicts (one per checkpoint) and the steps they belong to, and
writes them the way some other project would: per-epoch torch files, PyTorch Lightning
``.ckpt`` files (prefixed keys, ``global_step``), ``.safetensors`` files with metadata, or one
bundle file (Nanda et al.'s ``full_run_data.pth`` layout). No Lightning install is needed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grokscope.data import Data


class NotAWeight:
    """A custom class: pickling an instance makes a file need arbitrary code to load."""

    def __init__(self, value: int = 3) -> None:
        self.value = value


def small_model(seed: int = 0) -> nn.Module:
    """``Linear(4, 8) -> ReLU -> Linear(8, 3)``: keys ``0.weight``, ``0.bias``, ``2.*``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def small_data(seed: int = 0, n_train: int = 12, n_test: int = 8) -> Data:
    g = torch.Generator().manual_seed(seed)
    return Data(
        torch.randn(n_train, 4, generator=g),
        torch.randint(0, 3, (n_train,), generator=g),
        torch.randn(n_test, 4, generator=g),
        torch.randint(0, 3, (n_test,), generator=g),
        task={"name": "toy"},
    )


def trajectory(model: nn.Module, n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` distinct state dicts: ``model``'s, then random walks from it (cloned tensors)."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = [sd]
    for _ in range(n - 1):
        sd = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        out.append(sd)
    return out


def write_per_epoch(
    folder: Path,
    sds: list[dict],
    steps: list[int],
    *,
    name: str = "epoch_{step}.pt",
    state_key: str | None = "model",
    step_in_file: str | None = "epoch",
    scalars: bool = True,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """One torch file per checkpoint; ``state_key=None`` writes bare state dicts."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for sd, step in zip(sds, steps):
        if state_key is None:
            obj: Any = sd
        else:
            obj = {state_key: sd, **(extra or {})}
            if step_in_file:
                obj[step_in_file] = step
            if scalars:
                obj.update(train_loss=1.0 / (step + 1), test_acc=torch.tensor(step / 1000.0),
                           optimizer={"lr": 1e-3})
        path = folder / name.format(step=step)
        torch.save(obj, path)
        paths.append(path)
    return paths


def write_lightning(folder: Path, sds: list[dict], steps: list[int], *, prefix: str = "model.",
                    steps_per_epoch: int = 10) -> list[Path]:
    """Lightning-style ``epoch=E-step=S.ckpt`` files: keys ``prefix + key`` plus a loss buffer."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for sd, step in zip(sds, steps):
        epoch = step // steps_per_epoch
        state = {prefix + k: v for k, v in sd.items()}
        state["criterion.weight"] = torch.ones(3)  # a module outside the model: ignored
        obj = {
            "epoch": epoch,
            "global_step": step,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}}},
            "callbacks": {},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 0.01, "width": 8},
        }
        path = folder / f"epoch={epoch}-step={step}.ckpt"
        torch.save(obj, path)
        paths.append(path)
    return paths


def write_safetensors(folder: Path, sds: list[dict], steps: list[int], *,
                      name: str = "step_{step}.safetensors") -> list[Path]:
    """``.safetensors`` per checkpoint, metadata ``train_loss`` (a number) and ``note`` (text)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for sd, step in zip(sds, steps):
        path = folder / name.format(step=step)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
                  metadata={"train_loss": str(0.5 / (step + 1)), "note": "hello"})
        paths.append(path)
    return paths


def write_nanda_bundle(path: Path, sds: list[dict], epochs: list[int], n_epochs: int, *,
                       final: dict | None = None, indices: tuple | None = None,
                       config: Any = None) -> Path:
    """Nanda et al.'s ``full_run_data.pth``: per-epoch loss lists, checkpoints + their epochs."""
    obj: dict[str, Any] = {
        "model": final if final is not None else sds[-1],
        "config": config if config is not None else {"d_model": 8, "seed": 0},
        "checkpoints": sds,
        "checkpoint_epochs": epochs,
        "test_losses": [10.0 + e for e in range(n_epochs)],
        "train_losses": [float(e) for e in range(n_epochs)],
    }
    if indices is not None:
        obj["train_indices"], obj["test_indices"] = indices
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_list_bundle(path: Path, sds: list[dict], steps: list[int]) -> Path:
    """A plain list of ``{"epoch": e, "model": sd, "train_loss": ...}`` dicts."""
    obj = [{"epoch": s, "model": sd, "train_loss": s * 0.1} for sd, s in zip(sds, steps)]
    torch.save(obj, path)
    return path


def claim_cuda(path: Path) -> Path:
    """Rewrite a zip-format torch file so its storages claim device ``cuda:0``.

    Loading it without ``map_location`` on a CPU-only machine then fails, as a checkpoint saved
    on a GPU does.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                old, new = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
                assert old in data
                data = data.replace(old, new)
            zout.writestr(info.filename, data)
    tmp.replace(path)
    return path
