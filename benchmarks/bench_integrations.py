"""What the framework callbacks and LiveLog cost per checkpoint.

Rows (medians, one thread; a modular-addition MLP, p = 59, width 256, ~45k parameters, and a
~1M-parameter MLP for the recording rows):

- **callback recording**: the session the Lightning / Hugging Face callbacks use (copy the
  weights to the CPU at the step's end, commit at the next step's start) vs calling
  ``Recorder.record`` directly in the loop. Ratio ``direct / callback``: 1.0x means the
  deferred commit is free, 0.8x that it costs 25% more.
- **live measures**: ``LiveLog.update`` on a new checkpoint (``curves`` + the NFA correlation,
  figure off, no sink) vs the naive way to get the same numbers while training:
  ``gs.analyze(path, ["curves", "nfa"], steps=[step])`` on the store after each record (which
  rebuilds the model from the store, computes the ``nfa`` measure's every variant and its
  final-step AGOP alignment, and writes results).
- **live figure**: the same with the curves figure rendered (Agg, 640x420) as well.

Measured on the shared 2-core machine (``python -m benchmarks integrations``): recording
through the callback session 8.0 ms vs 7.2 ms direct (0.9x: the CPU copy of the weights);
LiveLog.update 16 ms vs gs.analyze 0.92 s (57x); with the figure 0.66 s (1.4x): the figure,
not the measures, is the cost of live logging (``figure=False`` or a larger ``every``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ._common import Row, median_time


def _mlp(sizes: list[int]) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _recording_rows(tmp: Path, quick: bool) -> list[Row]:
    import grokscope as gs
    from grokscope.integrations._core import RecordingSession

    model = _mlp([1000, 800, 256, 10])
    n = 5 if quick else 20
    step = iter(range(1, 10**6))

    with gs.Recorder(tmp / "direct.zarr", model, None, export_program=False) as rec:
        direct = median_time(lambda: rec.record(next(step), model), repeat=n)

    session = RecordingSession(tmp / "cb.zarr", None, recorder_kwargs={"export_program": False})
    session.open(model, 0)
    session.schedule = None
    session.recorder.schedule = gs.Schedule(log_until=1, per_decade=1, every=1)  # every step due

    def via_session() -> None:
        session.step_end(next(step), model)
        session.flush({})

    cb = median_time(via_session, repeat=n)
    session.close()
    return [Row("record 1 checkpoint (1M params)", "callback session", cb,
                "Recorder.record in the loop", direct, "~1x")]


def _live_rows(tmp: Path, quick: bool) -> list[Row]:
    import grokscope as gs
    from grokscope.integrations import LiveLog

    data = gs.make_task("modular", p=59, train_frac=0.45, seed=0)
    model = _mlp([118, 256, 59])
    path = tmp / "live.zarr"
    live = LiveLog(every=1, figure=False)
    live_fig = LiveLog(every=1, figure=True)
    with gs.Recorder(path, model, data) as rec:
        for s in range(3):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)
            rec.record(s, model)
        n = 3 if quick else 7
        ours = median_time(lambda: live.update(rec, model), repeat=n)
        fig = median_time(lambda: live_fig.update(rec, model), repeat=n)
    naive = median_time(lambda: gs.analyze(path, ["curves", "nfa"], steps=[2], progress=False,
                                           recompute=True, num_threads=1), repeat=n)
    return [
        Row("live measures of 1 checkpoint (p=59 MLP)", "LiveLog.update", ours,
            "gs.analyze(steps=[step])", naive, ">1x"),
        Row("live measures + curves figure (640x420)", "LiveLog.update, figure on", fig,
            "gs.analyze(steps=[step])", naive, ">1x"),
    ]


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        return _recording_rows(Path(d), quick) + _live_rows(Path(d), quick)
