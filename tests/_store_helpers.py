"""Helpers for the store tests: a tiny importable model, deterministic weights per step, and
the writer loop the crash tests run in a child process."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import torch
from torch import nn

from grokscope.data import Data


class TinyNet(nn.Module):
    """A module-level (importable) model: two Linear layers."""

    def __init__(self, d_in: int = 4, width: int = 8, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def tiny_data(n: int = 12, d_in: int = 4) -> Data:
    g = torch.Generator().manual_seed(0)
    return Data(
        torch.randn(n, d_in, generator=g),
        torch.randint(0, 3, (n,), generator=g),
        torch.randn(n // 2, d_in, generator=g),
        torch.randint(0, 3, (n // 2,), generator=g),
        task={"name": "toy", "n_classes": 3},
        extras={"w_star": torch.arange(d_in, dtype=torch.float32)},
    )


def fill_step(model: nn.Module, step: int) -> None:
    """Set every parameter entry to ``step + k / 1000`` (k = tensor number): exact in float32
    for the step ranges the tests use."""
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.fill_(step + k / 1000)


def expected(model: nn.Module, step: int) -> dict[str, np.ndarray]:
    out = {}
    for k, (name, p) in enumerate(model.named_parameters()):
        out[name] = np.full(tuple(p.shape), np.float32(step + k / 1000), dtype=np.float32)
    return out


def check_run_exact(run, model: nn.Module) -> None:
    """Every committed step of ``run`` holds exactly the weights/metrics ``fill_step`` wrote."""
    steps = run.steps
    assert np.all(np.diff(steps) > 0)
    if not len(steps):
        return
    for k, (name, _p) in enumerate(model.named_parameters()):
        traj = run.trajectory(name)
        want = (steps.astype(np.float64) + k / 1000).astype(np.float32)
        assert traj.shape[0] == len(steps)
        np.testing.assert_array_equal(traj.reshape(len(steps), -1), np.broadcast_to(
            want[:, None], (len(steps), traj[0].size)))
    np.testing.assert_array_equal(run.trajectory("train_loss"), steps * 0.5)


def writer_loop(path: str, *, seed: int, close_every: int = 0, sleep: float = 0.0,
                max_steps: int = 10**9) -> None:
    """Append steps forever (the parent kills us): reopen, continue after the last step.

    With ``close_every`` > 0 the recorder is closed and re-opened every that many records, so
    kills also land during trimming/consolidation and re-opening.
    """
    from grokscope.store import Recorder

    rnd = random.Random(seed)
    model = TinyNet()
    data = tiny_data()
    n = 0
    while n < max_steps:
        rec = Recorder(path, model, data, config={"seed": 0})
        step = 0 if rec.last_step is None else rec.last_step + rnd.randint(1, 3)
        try:
            while n < max_steps:
                fill_step(model, step)
                rec.record(step, metrics={"train_loss": step * 0.5})
                n += 1
                step += rnd.randint(1, 3)
                if sleep:
                    time.sleep(sleep)
                if close_every and n % close_every == 0:
                    break
        finally:
            rec.close()


def child_main(path: str, seed: int, close_every: int, sleep: float, max_steps: int) -> None:
    """Entry point of a forked writer; exits without running parent-process cleanup."""
    code = 0
    try:
        writer_loop(path, seed=seed, close_every=close_every, sleep=sleep, max_steps=max_steps)
    except BaseException:  # noqa: BLE001 (report any failure through the exit code)
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


def exit_code_of_forked(body) -> int:
    """Run ``body()`` in a forked child and return its exit status: 0 when it returns, 1 when
    it raises (the traceback is printed), or the code of an ``os._exit`` it calls (e.g. a kill
    point); -1 when the child died of a signal."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            body()
        except BaseException:  # noqa: BLE001 (reported through the exit code)
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
