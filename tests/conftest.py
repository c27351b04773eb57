"""Shared fixtures: tiny recorded runs built with the public Recorder and a manual loop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# test helper modules (e.g. the model zoo `_zoo`) import by their plain names too
sys.path.insert(0, str(Path(__file__).parent))


def record_tiny_run(path, *, model_name="mlp", encoding="onehot", p=11, steps=(0, 5, 10, 20, 40),
                    lr=3e-3, weight_decay=1.0, seed=0, model_kwargs=None, break_at=None):
    """Train a tiny modular-addition model and record it at ``steps``; returns the opened Run.

    ``break_at``: a step at which the recorded weights are replaced by NaN (fault tests).
    """
    import grokscope as gs
    from grokscope.models import model_for
    from grokscope.tasks import make_task

    torch.manual_seed(seed)
    data = make_task("modular", p=p, train_frac=0.5, seed=seed, encoding=encoding)
    kwargs = {"width": 24} if model_name == "mlp" else {"d_model": 16, "n_heads": 2, "d_mlp": 32}
    kwargs.update(model_kwargs or {})
    model = model_for(model_name, data, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = sorted(steps)
    with gs.Recorder(path, model, data, config={"seed": seed}) as rec:
        for step in range(steps[-1] + 1):
            if step in steps:
                with torch.no_grad():
                    tr = (model(data.x_train).argmax(-1) == data.y_train).float().mean().item()
                    te = (model(data.x_test).argmax(-1) == data.y_test).float().mean().item()
                if step == break_at:
                    saved = {k: v.clone() for k, v in model.state_dict().items()}
                    with torch.no_grad():
                        for prm in model.parameters():
                            prm.fill_(float("nan"))
                    rec.record(step, model, {"train_acc": tr, "test_acc": te})
                    model.load_state_dict(saved)
                else:
                    rec.record(step, model, {"train_acc": tr, "test_acc": te})
            loss = torch.nn.functional.cross_entropy(model(data.x_train), data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return gs.open_run(path)


@pytest.fixture
def tiny_run(tmp_path):
    return record_tiny_run(tmp_path / "mlp.zarr")


@pytest.fixture
def tiny_transformer_run(tmp_path):
    return record_tiny_run(tmp_path / "tf.zarr", model_name="transformer", encoding="tokens")


@pytest.fixture
def one_torch_thread():
    """torch at one thread for the test (a watcher and a writer in one process), then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
