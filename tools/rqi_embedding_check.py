"""An independent look at the first-layer embedding of a two-hot modular-addition MLP run.

Reads the stored weights with zarr and numpy only (none of grokscope's measure code) and prints,
at chosen steps, what decides the modular RQI (``docs/measures.md``, rqi):

* ``rqi``: the modular RQI recomputed by brute force over every pair of token pairs
  ``{i, n} != {j, m}`` with ``i + n = j + m (mod p)``: parallel chords, per-dimension std
  normalisation, threshold ``0.01 * d`` (grokscope's defaults), and the same without the
  normalisation (``rqi_raw``);
* ``median |cos|``: the median absolute cosine between the two chords ``E_n - E_i`` and
  ``E_m - E_j`` of a quadruple (a quadruple passes only above ~0.9975);
* ``neuron top-freq share``: per hidden neuron, the share of its first-operand weights'
  Fourier power (over tokens, mean removed) in its strongest frequency (median over neurons);
* ``largest group``: neurons whose strongest frequency is the most common one;
* ``top-1 / top-5 power``: the embedding's Fourier power in its 1 and 5 strongest frequencies.

Usage::

    python tools/rqi_embedding_check.py RUN [--steps 0 63 1400 2100] [--layer layers.0.weight]

``RUN`` is a store of a two-hot modular run (``grokscope demo -o RUN`` writes one).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import zarr


def modular_quadruples(p: int) -> np.ndarray:
    """``(Q, 4)`` rows ``i, n, j, m``: distinct unordered pairs with ``i + n = j + m (mod p)``."""
    rows = []
    for s in range(p):
        pairs = [(i, (s - i) % p) for i in range(p) if i < (s - i) % p]
        rows += [(*a, *b) for a, b in itertools.combinations(pairs, 2)]
    return np.array(rows)


def chord_stats(E: np.ndarray, quads: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(fraction of quadruples with parallel chords, median |cos| of the chords)``."""
    a = E[quads[:, 1]] - E[quads[:, 0]]
    b = E[quads[:, 3]] - E[quads[:, 2]]
    aa, bb, ab = (a * a).sum(1), (b * b).sum(1), (a * b).sum(1)
    defect = (aa * bb - ab**2) / ((aa + bb) / 2)
    cos = np.abs(ab) / np.sqrt(aa * bb)
    return float((defect < threshold).mean()), float(np.median(cos))


def frequency_stats(E: np.ndarray) -> dict[str, float]:
    """Per-neuron and whole-table Fourier concentration of ``E`` (``(p, d)``, rows = tokens)."""
    power = np.abs(np.fft.rfft(E - E.mean(0), axis=0)[1:]) ** 2  # (freqs, d)
    share = power.max(0) / power.sum(0)
    top = power.argmax(0)
    total = np.sort(power.sum(1))[::-1] / power.sum()
    return {
        "neuron_top_freq_share_median": float(np.median(share)),
        "largest_freq_group": int(np.bincount(top).max()),
        "n_freqs_used": int(np.unique(top).size),
        "top1_power": float(total[0]),
        "top5_power": float(total[:5].sum()),
    }


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a two-hot modular run store")
    ap.add_argument("--steps", type=int, nargs="*", help="steps to show (default: first, last)")
    ap.add_argument("--layer", default="layers.0.weight", help="first-layer weight (out, 2p)")
    args = ap.parse_args(argv)
    g = zarr.open_group(args.run, mode="r")
    task = (dict(g.attrs.get("grokscope") or {}).get("config") or {}).get("task") or {}
    weights = g[args.layer]
    p = int(task.get("p", weights.shape[2] // 2))
    steps = np.asarray(g["step"][:])
    want = args.steps or [int(steps[0]), int(steps[-1])]
    quads = modular_quadruples(p)
    out = {}
    for step in want:
        k = int(np.flatnonzero(steps == step)[0]) if step in steps else None
        if k is None:
            raise SystemExit(f"step {step} is not recorded; recorded: {steps.tolist()}")
        E = np.asarray(weights[k], dtype=np.float64)[:, :p].T  # row a: what token a adds
        d = E.shape[1]
        rqi, cos = chord_stats(E / E.std(0), quads, 0.01 * d)
        rqi_raw, _ = chord_stats(E, quads, 0.01 * d)
        out[step] = {"rqi": rqi, "rqi_raw": rqi_raw, "median_abs_cos": cos, **frequency_stats(E)}
        print(f"step {step:>6}: " + ", ".join(f"{key} {v:.4g}" for key, v in out[step].items()))
    print(f"({len(quads)} quadruples, p = {p}, d = {E.shape[1]})")
    return out


if __name__ == "__main__":
    main()
