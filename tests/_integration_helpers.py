"""Shared by the framework-integration tests: the recording schedule, one torch thread, the
modular-addition split every tiny training loop uses (``from _integration_helpers import
SCHEDULE, data_fixture, one_thread_fixture`` registers the fixtures ``data`` and
``_one_thread`` in a test module)."""

from __future__ import annotations

import pytest
import torch

import grokscope as gs

SCHEDULE = dict(log_until=10, per_decade=4, every=5)  # steps 0 1 2 3 6 10 15 20


@pytest.fixture(autouse=True, name="_one_thread")
def one_thread_fixture():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module", name="data")
def data_fixture():
    return gs.make_task("modular", p=11, train_frac=0.5, seed=0)
