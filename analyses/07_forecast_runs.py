"""The runs behind the forecast evaluation (issue 12): a FIT set and a HELD-OUT set.

The forecaster's few constants (:mod:`grokscope.forecast`) are fitted on the FIT runs only
(``analyses/08_forecast_eval.py --fit``); the evaluation table in ``reports/forecast/`` is
computed on the HELD-OUT runs, which differ from the fit runs in **both** their seeds (model
and split seeds 10-13 instead of 0-1) **and** their configurations (no (task, size, train
fraction / train size, weight decay) cell appears in both lists).

Every run uses grokscope's trainer with one thread, full-batch AdamW, a step cap (runs that
have not generalised by then count as "never groks" in the evaluation), a stop 100 steps
after test accuracy first reaches 0.9, and a dense recording schedule (log-spaced to step 100,
then every 20 steps) so a forecast at 25% of a short ``t_test`` still has data.

Usage::

    python analyses/07_forecast_runs.py [--out /tmp/gs/forecast_runs] [--only fit|heldout]
    python analyses/07_forecast_runs.py --out /tmp/gs/forecast_runs2 --only heldout2
    python analyses/07_forecast_runs.py --out /tmp/gs/forecast_runs3 --only heldout3

Existing finished stores are skipped, so the script can be restarted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import grokscope as gs

CAP = 4000
SCHEDULE = {"log_until": 100, "per_decade": 10, "every": 20}
STOP = {"test_acc": 0.9, "patience": 100}


def modular(p: int, frac: float, wd: float, *, width: int = 128, lr: float = 1e-2,
            op: str = "+") -> dict[str, Any]:
    return dict(task="modular", task_kwargs={"p": p, "op": op, "train_frac": frac},
                model="mlp", model_kwargs={"width": width}, lr=lr, weight_decay=wd)


def transformer(p: int, frac: float, wd: float, *, lr: float = 3e-3) -> dict[str, Any]:
    return dict(task="modular",
                task_kwargs={"p": p, "op": "+", "train_frac": frac, "encoding": "tokens"},
                model="transformer", model_kwargs={"d_model": 32, "n_heads": 2, "d_mlp": 64},
                lr=lr, weight_decay=wd)


def parity(n_train: int, wd: float, *, n_bits: int = 20) -> dict[str, Any]:
    return dict(task="parity",
                task_kwargs={"n_bits": n_bits, "k": 3, "n_train": n_train, "n_test": 500},
                model="mlp", model_kwargs={"width": 128}, lr=1e-2, weight_decay=wd)


def digits(train_size: int, init_scale: float, wd: float) -> dict[str, Any]:
    return dict(task="digits", task_kwargs={"train_size": train_size},
                model="mlp", model_kwargs={"width": 128, "init_scale": init_scale},
                lr=1e-3, weight_decay=wd)


#: (name, config) cells; each is trained once per seed of its set
FIT_CONFIGS: list[tuple[str, dict]] = [
    ("mod31_f50_wd1", modular(31, 0.5, 1.0)),
    ("mod31_f70_wd1", modular(31, 0.7, 1.0)),
    ("mod31_f60_wd0.3", modular(31, 0.6, 0.3)),
    ("mod31_f40_wd3", modular(31, 0.4, 3.0)),
    ("mod31_f80_wd0.1", modular(31, 0.8, 0.1)),
    ("mod31_f30_wd1", modular(31, 0.3, 1.0)),
    ("mod31_f60_wd0", modular(31, 0.6, 0.0)),
    ("mod41_f50_wd1", modular(41, 0.5, 1.0)),
    ("mod41_f60_wd0.3", modular(41, 0.6, 0.3)),
    ("par20_n600_wd1", parity(600, 1.0)),
    ("par20_n1200_wd1", parity(1200, 1.0)),
    ("par20_n2000_wd1", parity(2000, 1.0)),
    ("dig_n100_init10_wd1", digits(100, 10.0, 1.0)),
    ("dig_n200_init6_wd0.3", digits(200, 6.0, 0.3)),
    ("tr31_f70_wd1", transformer(31, 0.7, 1.0, lr=5e-3)),
]
FIT_SEEDS = [0, 1]

HELDOUT_CONFIGS: list[tuple[str, dict]] = [
    ("mod31_f45_wd1", modular(31, 0.45, 1.0)),
    ("mod31_f65_wd0.5", modular(31, 0.65, 0.5)),
    ("mod31_f55_wd2", modular(31, 0.55, 2.0)),
    ("mod31_f75_wd0.3", modular(31, 0.75, 0.3)),
    ("mod31_f35_wd1", modular(31, 0.35, 1.0)),
    ("mod31_f50_wd0", modular(31, 0.5, 0.0)),
    ("mod41_f55_wd1", modular(41, 0.55, 1.0)),
    ("mod41_f70_wd0.5", modular(41, 0.7, 0.5)),
    ("mod41_f45_wd3", modular(41, 0.45, 3.0)),
    ("mod37_f60_wd1", modular(37, 0.6, 1.0)),
    ("mod59_f50_wd1_w256", modular(59, 0.5, 1.0, width=256, lr=5e-3)),
    ("par20_n800_wd0.5", parity(800, 0.5)),
    ("par20_n1500_wd0.5", parity(1500, 0.5)),
    ("par20_n3000_wd0.5", parity(3000, 0.5)),
    ("dig_n150_init8_wd0.5", digits(150, 8.0, 0.5)),
    ("dig_n300_init1_wd0.1", digits(300, 1.0, 0.1)),
    ("tr31_f80_wd1", transformer(31, 0.8, 1.0, lr=5e-3)),
]
HELDOUT_SEEDS = [10, 11, 12, 13]
#: fewer seeds for the slower cells (CPU budget)
HELDOUT_SEEDS_SLOW = [10, 11, 12]
SLOW = {"mod59_f50_wd1_w256", "tr31_f80_wd1", "dig_n150_init8_wd0.5", "dig_n300_init1_wd0.1",
        "par20_n800_wd0.5", "par20_n1500_wd0.5", "par20_n3000_wd0.5"}


#: a SECOND held-out set (forecast v2, issue 12), written before v2 was fitted: new seeds
#: (20-23) and cells that appear in neither list above (other moduli, train fractions, weight
#: decays, learning rates, widths, a subtraction table, other parity / digits sizes, another
#: transformer). v2 is fitted on the FIT runs only; both v1 and v2 are evaluated on these.
HELDOUT2_CONFIGS: list[tuple[str, dict]] = [
    ("mod31_f42_wd1.5", modular(31, 0.42, 1.5)),
    ("mod31_f62_wd0.7_lr5e-3", modular(31, 0.62, 0.7, lr=5e-3)),
    ("mod43_f55_wd1", modular(43, 0.55, 1.0)),
    ("mod37_f50_wd0.5_w192", modular(37, 0.5, 0.5, width=192)),
    ("mod31sub_f55_wd1", modular(31, 0.55, 1.0, op="-")),
    ("mod31_f85_wd1", modular(31, 0.85, 1.0)),
    ("mod31_f55_wd0", modular(31, 0.55, 0.0)),
    ("mod29_f60_wd1_lr2e-2", modular(29, 0.6, 1.0, lr=2e-2)),
    ("mod31_f25_wd2", modular(31, 0.25, 2.0)),
    ("mod41_f65_wd2_w64", modular(41, 0.65, 2.0, width=64)),
    ("par20_n1000_wd0.3", parity(1000, 0.3)),
    ("par20_n400_wd1", parity(400, 1.0)),
    ("par20_n2500_wd2", parity(2500, 2.0)),
    ("dig_n120_init8_wd1.5", digits(120, 8.0, 1.5)),
    ("dig_n250_init4_wd0.5", digits(250, 4.0, 0.5)),
    ("dig_n500_init1_wd0.3", digits(500, 1.0, 0.3)),
    ("tr31_f60_wd1", transformer(31, 0.6, 1.0, lr=5e-3)),
    ("tr37_f70_wd0.5", transformer(37, 0.7, 0.5, lr=3e-3)),
]
HELDOUT2_SEEDS = [20, 21, 22, 23]
HELDOUT2_SEEDS_SLOW = [20, 21, 22]
SLOW2 = {"mod31_f55_wd0", "mod31_f25_wd2", "mod37_f50_wd0.5_w192", "tr31_f60_wd1",
         "tr37_f70_wd0.5", "dig_n120_init8_wd1.5"}


#: a THIRD held-out set (forecast v3, issue 12), written on 2026-12-01 before v3 was designed or
#: fitted: seeds 30-33 and cells in none of the lists above (other moduli, train fractions,
#: weight decays, learning rates, widths, a multiplication table, other parity / digits sizes,
#: other transformers). v3 is fitted on FIT + HELDOUT + HELDOUT2 (all seen by then) and judged,
#: with v1 and v2, on these runs only.
HELDOUT3_CONFIGS: list[tuple[str, dict]] = [
    ("mod31_f48_wd0.8", modular(31, 0.48, 0.8)),
    ("mod31_f68_wd1.2_lr7e-3", modular(31, 0.68, 1.2, lr=7e-3)),
    ("mod47_f50_wd1", modular(47, 0.5, 1.0)),
    ("mod37_f45_wd2", modular(37, 0.45, 2.0)),
    ("mod31sub_f65_wd0.5", modular(31, 0.65, 0.5, op="-")),
    ("mod31mul_f60_wd1", modular(31, 0.6, 1.0, op="*")),
    ("mod31_f90_wd0.5", modular(31, 0.9, 0.5)),
    ("mod31_f60_wd0.05", modular(31, 0.6, 0.05)),
    ("mod31_f20_wd1", modular(31, 0.2, 1.0)),
    ("mod41_f50_wd0", modular(41, 0.5, 0.0)),
    ("mod31_f52_wd1_w96", modular(31, 0.52, 1.0, width=96)),
    ("par20_n700_wd0.7", parity(700, 0.7)),
    ("par20_n1800_wd0.2", parity(1800, 0.2)),
    ("par20_n300_wd2", parity(300, 2.0)),
    ("dig_n180_init7_wd0.8", digits(180, 7.0, 0.8)),
    ("dig_n400_init2_wd0.2", digits(400, 2.0, 0.2)),
    ("tr31_f65_wd0.7", transformer(31, 0.65, 0.7, lr=5e-3)),
    ("tr29_f75_wd1", transformer(29, 0.75, 1.0, lr=4e-3)),
]
HELDOUT3_SEEDS = [30, 31, 32, 33]
HELDOUT3_SEEDS_SLOW = [30, 31, 32]
SLOW3 = {"mod41_f50_wd0", "mod31_f60_wd0.05", "mod31_f20_wd1", "tr31_f65_wd0.7",
         "tr29_f75_wd1", "dig_n180_init7_wd0.8"}


def runs(which: str) -> list[tuple[str, dict, int]]:
    """``(run name, config, seed)`` of one set (``"fit"``, ``"heldout"``, ``"heldout2"`` or
    ``"heldout3"``)."""
    if which == "heldout3":
        return [(f"heldout3/{n}_s{s}", c, s) for n, c in HELDOUT3_CONFIGS
                for s in (HELDOUT3_SEEDS_SLOW if n in SLOW3 else HELDOUT3_SEEDS)]
    if which == "fit":
        return [(f"fit/{n}_s{s}", c, s) for n, c in FIT_CONFIGS for s in FIT_SEEDS]
    if which == "heldout2":
        return [(f"heldout2/{n}_s{s}", c, s) for n, c in HELDOUT2_CONFIGS
                for s in (HELDOUT2_SEEDS_SLOW if n in SLOW2 else HELDOUT2_SEEDS)]
    out = []
    for n, c in HELDOUT_CONFIGS:
        for s in (HELDOUT_SEEDS_SLOW if n in SLOW else HELDOUT_SEEDS):
            out.append((f"heldout/{n}_s{s}", c, s))
    return out


def train_one(root: Path, name: str, cfg: dict, seed: int) -> dict:
    out = root / name
    done = out / "finished.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = {**cfg, "task_kwargs": {**cfg["task_kwargs"], "seed": seed}}
    t0 = time.perf_counter()
    gs.train(**cfg, out=out, steps=CAP, seed=seed, eval_every=20, stop_when=STOP,
             schedule=SCHEDULE, progress=False, overwrite=True, num_threads=1)
    info = {"name": name, "seconds": round(time.perf_counter() - t0, 2)}
    done.write_text(json.dumps(info))
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/gs/forecast_runs")
    ap.add_argument("--only", choices=["fit", "heldout", "heldout2", "heldout3"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.out)
    sets = [args.only] if args.only else ["fit", "heldout"]
    for which in sets:
        for name, cfg, seed in runs(which):
            info = train_one(root, name, cfg, seed)
            print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
