"""GrokAlign centroid alignment over a whole training split vs the ways that build Jacobians.

Set-up (full size): grokscope's one-layer transformer (``d_model=128``, 4 heads,
``d_mlp=512``) on modular addition at ``p = 113`` with ``train_frac=0.3``: the 3,830 training
pairs of the issue, ``C = 113`` logits, the input role the 128-wide token embedding. Rows:

- **centroid vs one plain forward+backward**: ``centroid_per_point`` over every training pair
  (one forward + one backward of the summed logits per chunk of 256) against one ordinary
  training-style pass of the same model on the same points (``cross_entropy(model(x),
  y).backward()``, one batch). The target is ours at most 5x the plain pass, i.e. the speed-up
  column (naive / ours) at least 0.2x.
- **the alignment measure vs full Jacobians everywhere**: the registered ``alignment`` measure
  at its defaults (centroid quantities on every point, Jacobian extras on the first
  ``jacobian_points=256``) against the previous approach, the full ``(n, C, d)`` Jacobian of
  every point plus the centroid (``alignment_per_point`` on all points). The full-Jacobian
  path is timed on the first 512 points and extrapolated linearly to all of them (its cost is
  linear in points; the label says so).
- **centroid vs a per-point loop**: one forward + backward per point, timed on a subset and
  extrapolated linearly (label says so).

Every timing is a median over interleaved rounds, single-threaded (``torch.set_num_threads(1)``
for the duration: the machine is shared). The centroids of the three ways are checked to agree
before timing.

Measured (``python -m benchmarks alignment``, 2 shared cores, one thread, 2026-12-01):
centroid over the 3,830 pairs 0.49 s vs one plain forward+backward 0.56 s (1.1x *faster*:
target <= 5x slower met; the centroid's backward stops at the embedding output); the measure
at its defaults 3.6 s vs 47.8 s for full Jacobians on every point (13x); the per-point loop
9.8 s (20x).
"""

from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F

from benchmarks._common import Row, median_time
from grokscope._threads import torch_threads
from grokscope.measures import Checkpoint
from grokscope.measures._jacobian import as_view, centroid, input_view
from grokscope.measures.alignment import alignment, alignment_per_point, centroid_per_point
from grokscope.models import build_model
from grokscope.tasks.modular import make_modular


def _plain_forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One ordinary training-style pass: forward, cross-entropy, ``loss.backward()``."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def _loop_centroids(view, x: torch.Tensor) -> torch.Tensor:
    """The naive centroid: one forward + backward of the summed logits per point."""
    return torch.cat([centroid(input_view(view, x[i : i + 1])) for i in range(x.shape[0])])


def run(quick: bool = False) -> list[Row]:
    with torch_threads(1):  # the machine is shared: oversubscribed threads make noise
        return _run(quick)


def _run(quick: bool) -> list[Row]:
    p, d_model, d_mlp, jac_n, loop_n = (31, 64, 256, 128, 50) if quick else (113, 128, 512, 512, 200)
    torch.manual_seed(0)
    data = make_modular(p=p, op="+", train_frac=0.3, seed=0, encoding="tokens")
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    model = build_model("transformer", vocab=p + 1, out_dim=p, d_model=d_model, n_heads=4,
                        d_mlp=d_mlp).eval()
    view = as_view(model, x)
    ckpt = Checkpoint(0, model, data)

    # the three centroids agree before anything is timed
    ours = torch.as_tensor(centroid_per_point(view, x)["centroid_norm"])
    full = torch.as_tensor(alignment_per_point(view, x[:loop_n])["centroid_norm"])
    loop = _loop_centroids(view, x[:loop_n]).double().norm(dim=1)
    agree = max(float((ours[:loop_n] - full).abs().max() / full.abs().max()),
                float((ours[:loop_n] - loop).abs().max() / loop.abs().max()))
    print(f"# bench_alignment: {n} training pairs at p={p}; max relative difference of the "
          f"centroid norms between methods {agree:.1e}", file=sys.stderr)
    if agree > 1e-4:
        raise AssertionError(f"centroid methods disagree (max relative difference {agree:.1e})")

    times: dict[str, list[float]] = {k: [] for k in ("centroid", "plain", "measure", "full", "loop")}
    for _ in range(2 if quick else 3):
        times["centroid"].append(median_time(lambda: centroid_per_point(view, x), repeat=3))
        times["plain"].append(median_time(lambda: _plain_forward_backward(model, x, y), repeat=3))
        times["measure"].append(median_time(lambda: alignment(ckpt), repeat=1))
        times["full"].append(
            median_time(lambda: alignment_per_point(view, x[:jac_n]), repeat=1, warmup=0)
            * n / jac_n
        )
        times["loop"].append(
            median_time(lambda: _loop_centroids(view, x[:loop_n]), repeat=1, warmup=0) * n / loop_n
        )
    t = {k: statistics.median(v) for k, v in times.items()}

    name = f"alignment p={p} transformer, {n} train pairs"
    return [
        Row(name, "centroid_per_point (all points)", t["centroid"],
            "one plain forward+backward", t["plain"], ">=0.2x (centroid <=5x one fwd+bwd)"),
        Row(name, "alignment measure (defaults)", t["measure"],
            f"full Jacobian every point ({jac_n} timed, x{n / jac_n:.1f} extrapolated)",
            t["full"], ">=10x"),
        Row(name, "centroid_per_point (all points)", t["centroid"],
            f"per-point loop ({loop_n} timed, x{n / loop_n:.0f} extrapolated)", t["loop"], ""),
    ]


if __name__ == "__main__":
    from benchmarks._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
