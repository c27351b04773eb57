"""One long run analysed across a Dask ``LocalCluster``: speed-up over the serial path.

Set-up (full size): a 1-hidden-layer MLP (width 256) on modular addition at ``p = 31``,
recorded at 120 checkpoints (one AdamW step apart), analysed with the ``alignment`` measure
on the whole table with full Jacobians on every point (``split="all"``, 961 points,
``jacobian_points=None``): a moderately expensive step measure. Rows: ``gs.analyze(run, scheduler=client)`` on a
``LocalCluster`` of 1, 2 and 4 single-threaded worker processes (steps split into chunks,
default ``steps_per_task``) against the serial ``gs.analyze(run, num_threads=1)``. The
cluster is started and warmed (each worker has run the measure once: imports, first-call
costs) before timing, as an existing cluster would be; each timing recomputes every step and
writes the result once. The results are checked to be identical to the serial ones.

The wall-clock speed-up is capped by the machine's cores (``os.cpu_count()``) and by other load
on it; the benchmark prints both. The CPU rows add up the CPU seconds of the calling process
(which also runs the local scheduler) and of every worker process during the analysis, against
the serial analysis's: the work chunking adds (shipping tasks and parts, opening the run per
task, merging), which other load on the machine does not change. Medians over interleaved
rounds.

Measured (full size, 2 shared cores, load average 6.3, 2026-12-01): serial 16.95 s wall /
12.5 CPU s; 1, 2, 4 workers 21.4, 20.8, 21.6 s wall (0.8x) / 17.8, 19.7, 20.9 CPU s: no
speed-up on a busy 2-core machine, and a worker process spends ~1.35x the CPU of a plain
process per step (cause not found; see docs/distributed.md). Quiet machine (load ~1.2), after
workers open the run once per analysis: serial 12.54 s; 1, 2, 4 workers 17.1, 10.2, 11.4 s
(0.7x, 1.2x, 1.1x): the time falls with workers up to the 2 cores.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import xarray as xr

from benchmarks._common import Row

MEASURE = "alignment"
#: every point of the table, full Jacobians on all of them: ~0.1 s a checkpoint here
PARAMS = {"split": "all", "jacobian_points": None}


def _record(path: Path, *, p: int, width: int, steps: int) -> None:
    import grokscope as gs
    from grokscope.models import model_for
    from grokscope.tasks import make_task

    torch.manual_seed(0)
    data = make_task("modular", p=p, train_frac=0.5, seed=0)
    model = model_for("mlp", data, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)
    with gs.Recorder(path, model, data, config={"seed": 0}) as rec:
        for step in range(steps):
            rec.record(step, model)
            loss = torch.nn.functional.cross_entropy(model(data.x_train), data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()


def _analyze(path: Path, **dask) -> tuple[float, xr.Dataset]:
    import grokscope as gs

    t0 = time.perf_counter()
    res = gs.analyze(path, {MEASURE: PARAMS}, device="cpu", progress=False,
                     recompute=True, num_threads=1, **dask)
    return time.perf_counter() - t0, res[MEASURE]


def _warm_worker(path: str) -> None:
    """Run on every worker before timing: imports and first-call costs (torch.func) paid."""
    import grokscope as gs
    from grokscope.measures import Checkpoint
    from grokscope.measures.alignment import alignment

    run = gs.open_run(path)
    alignment(Checkpoint(0, run.model_at(int(run.steps[0])).eval(), run.data), split="all")


def _faults() -> int:
    """Minor page faults of this process so far (a worker's, through ``client.run``)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run(quick: bool = False) -> list[Row]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        return _run(quick, tmp)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)


def _label(k: int) -> str:
    return f"{k} worker{'s' if k > 1 else ''}"


def _run(quick: bool, tmp: Path) -> list[Row]:
    import dask
    from distributed import Client, LocalCluster

    from grokscope.worker_setup import KEEP_ENV

    p, width, steps, counts, rounds = (
        (17, 64, 24, (1, 2), 1) if quick else (31, 256, 120, (1, 2, 4), 3)
    )
    path = tmp / "run.zarr"
    _record(path, p=p, width=width, steps=steps)

    reference = _analyze(path)[1]  # also warms this process
    # configurations: (workers, keep Dask's malloc setting); the latter is the cost before
    # grokscope.worker_setup (a step in a worker cost ~1.4x the CPU of a plain step)
    configs = [(k, False) for k in counts] + [(k, True) for k in counts[:2]]
    times: dict = {"serial": []}
    cpu: dict = {"serial": []}  # CPU seconds: this process (+ the workers)
    faults: dict = {}  # minor page faults in the workers
    clusters = {}
    try:
        for k, keep in configs:
            with dask.config.set({"distributed.worker.profile.enabled": False}):  # as
                # gs.analyze(workers=k) starts its cluster (see grokscope.distributed)
                cluster = LocalCluster(n_workers=k, threads_per_worker=1, processes=True,
                                       dashboard_address=None,
                                       env={KEEP_ENV: "dask"} if keep else None)
            client = Client(cluster)
            clusters[k, keep] = (cluster, client)
            client.run(_warm_worker, str(path))  # every worker, before any timing
            times[k, keep], cpu[k, keep], faults[k, keep] = [], [], []
        for _ in range(rounds):
            c0 = time.process_time()
            times["serial"].append(_analyze(path)[0])
            cpu["serial"].append(time.process_time() - c0)
            for key, (_, client) in clusters.items():
                before, c0 = client.run(time.process_time), time.process_time()
                f0 = client.run(_faults)
                t, ds = _analyze(path, scheduler=client)
                after, f1 = client.run(time.process_time), client.run(_faults)
                cpu[key].append(time.process_time() - c0
                                + sum(after[w] - before[w] for w in after))
                faults[key].append(sum(f1[w] - f0[w] for w in f1))
                xr.testing.assert_identical(ds, reference)
                times[key].append(t)
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    med = statistics.median
    print(f"# bench_distributed: {steps} checkpoints, {os.cpu_count()} cores, load average "
          f"{load:.1f}; results identical to the serial path; seconds per round: "
          + ", ".join(f"{k} {[round(t, 1) for t in v]}" for k, v in times.items())
          + "; CPU s: " + ", ".join(f"{k} {[round(t, 1) for t in v]}" for k, v in cpu.items())
          + "; worker page faults (median): "
          + ", ".join(f"{k} {med(v):.0f}" for k, v in faults.items()),
          file=sys.stderr)
    t_serial, c_serial = med(times["serial"]), med(cpu["serial"])
    name = f"{MEASURE} over a {steps}-checkpoint run ({os.cpu_count()} cores)"
    rows = [
        Row(name, f"LocalCluster, {_label(k)}: wall", med(times[k, False]),
            "serial analyze (1 thread): wall", t_serial,
            "grows with workers, up to the free cores")
        for k in counts
    ]
    rows += [
        Row(name, f"LocalCluster, {_label(k)}: wall", med(times[k, False]),
            f"{_label(k)} with Dask's malloc setting: wall", med(times[k, True]),
            "> 1x (worker_setup.tune_malloc)")
        for k in counts[:2]
    ]
    rows += [
        Row(name, f"LocalCluster, {_label(k)}: CPU s, workers + caller", med(cpu[k, False]),
            "serial analyze: CPU s", c_serial, "~1x (the work chunking adds)")
        for k in counts
    ]
    rows += [
        Row(name, f"LocalCluster, {_label(k)}: CPU s", med(cpu[k, False]),
            f"{_label(k)} with Dask's malloc setting: CPU s", med(cpu[k, True]),
            "~1.4x (the cost tune_malloc removes)")
        for k in counts[:2]
    ]
    return rows


if __name__ == "__main__":
    from benchmarks._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
