"""AGOP of a 1-hidden-layer MLP's first layer: closed form and general path vs the naive ways.

Set-up (full size): all ``p^2 = 9409`` two-hot inputs of mod-97 arithmetic (194 dims), a
512-wide ReLU MLP, 97 logits. The AGOP ``G = (1/n) sum_x J_x^T J_x`` (``194 x 194``) by

- ours, closed form: ``W^T [(W2^T W2) * (M^T M / n)] W`` (``nfa.agop(method="closed_form")``);
- ours, general path: hooked class-batched backward passes (``nfa.agop(method="general")``);
- naive: a hand-written ``vmap(jacrev)`` over samples (chunks of 1024), then ``J^T J``;
- naive: a per-sample loop of ``torch.autograd.functional.jacobian``, timed on a subset and
  extrapolated linearly to all inputs (the label says so).

Every timing is a median over interleaved rounds, single-threaded (``torch.set_num_threads(1)`` for the duration: on
a shared machine oversubscribed threads dominate the timings); the results are checked to
agree before timing.
"""

from __future__ import annotations

import statistics
import sys

import torch
from torch.func import jacrev, vmap

from benchmarks._common import Row, median_time
from grokscope._threads import torch_threads
from grokscope.measures.nfa import agop
from grokscope.models import build_model


def _two_hot(p: int) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    eye = torch.eye(p)
    return torch.cat([eye[a.flatten()], eye[b.flatten()]], dim=1)


def _vmap_jacrev(model: torch.nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    def one(v: torch.Tensor) -> torch.Tensor:
        return model(v[None])[0]

    g = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            jac = vmap(jacrev(one))(x[i : i + chunk])  # (n, C, d)
            rows = jac.reshape(-1, jac.shape[-1])
            g += (rows.T @ rows).double()
    return g / x.shape[0]


def _loop(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    def one(v: torch.Tensor) -> torch.Tensor:
        return model(v[None])[0]

    g = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for v in x:
        jac = torch.autograd.functional.jacobian(one, v)  # (C, d)
        g += (jac.T @ jac).double()
    return g / x.shape[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def run(quick: bool = False) -> list[Row]:
    with torch_threads(1):  # the machine is shared: oversubscribed threads make noise
        return _run(quick)


def _run(quick: bool) -> list[Row]:
    p, width, loop_n = (31, 128, 100) if quick else (97, 512, 200)
    torch.manual_seed(0)
    x = _two_hot(p)
    n = x.shape[0]
    model = build_model("mlp", in_dim=2 * p, out_dim=p, width=width).eval()
    layer = "layers.0"

    _vmap_jacrev(model, x[:4])  # first use of torch.func imports its machinery: not timed
    ref = _vmap_jacrev(model, x)
    closed = agop(model, x, layer, method="closed_form")
    general = agop(model, x, layer, method="general")
    loop_sub = _loop(model, x[:loop_n])
    ref_sub = _vmap_jacrev(model, x[:loop_n])
    agree = max(_rel(closed, ref), _rel(general, ref), _rel(loop_sub, ref_sub))
    print(f"# bench_agop: max relative difference between methods {agree:.1e}", file=sys.stderr)
    if agree > 1e-4:
        raise AssertionError(f"AGOP methods disagree (max relative difference {agree:.1e})")

    # interleaved rounds, so that a change in the shared machine's load hits every method
    times: dict[str, list[float]] = {"closed": [], "general": [], "vmap": [], "loop": []}
    for _ in range(2 if quick else 3):
        times["closed"].append(
            median_time(lambda: agop(model, x, layer, method="closed_form"), repeat=5)
        )
        times["general"].append(
            median_time(lambda: agop(model, x, layer, method="general"), repeat=1, warmup=0)
        )
        times["vmap"].append(median_time(lambda: _vmap_jacrev(model, x), repeat=1, warmup=0))
        times["loop"].append(
            median_time(lambda: _loop(model, x[:loop_n]), repeat=1, warmup=0) * n / loop_n
        )
    t_closed, t_general, t_vmap, t_loop = (
        statistics.median(times[k]) for k in ("closed", "general", "vmap", "loop")
    )

    name = f"AGOP MLP {n}x{2 * p}->{width}->{p}"
    loop_label = f"per-sample loop ({loop_n} timed, x{n / loop_n:.0f} extrapolated)"
    return [
        Row(name, "closed form", t_closed, "vmap(jacrev)", t_vmap, ">=50x"),
        Row(name, "general path", t_general, "vmap(jacrev)", t_vmap, ">=1x"),
        Row(name, "closed form", t_closed, loop_label, t_loop, ""),
        Row(name, "general path", t_general, loop_label, t_loop, ""),
    ]


if __name__ == "__main__":
    from benchmarks._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
