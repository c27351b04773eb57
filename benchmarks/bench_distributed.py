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

Two more rows per count time clusters whose workers keep Dask's malloc setting
(``GROKSCOPE_WORKER_MALLOC=dask``): the cost before :mod:`grokscope.worker_setup`, and the
workers' minor page faults are printed for every configuration.

Why a worker step cost ~1.4x (found): Dask's nanny starts workers with
``MALLOC_TRIM_THRESHOLD_=65536``; any glibc malloc tunable fixes the mmap threshold at 128 KiB,
so every tensor above it is a fresh mmap, zero-filled page by page (12 alignment steps: 355,000
minor faults and 1.71 CPU s in a worker, 38,000-111,000 and 1.05-1.34 s in a plain process).
``worker_setup.tune_malloc`` sets the thresholds glibc's dynamic rule settles at (mmap 32 MiB,
trim 64 MiB) in each worker process.

Measured after the fix (full size, 2 cores shared with other benchmarks, load average 10-16,
2026-12-01; wall times say little at that load): CPU s serial 13.96; 1, 2, 4 workers 14.17,
15.31, 16.80 (1.02x, 1.10x, 1.20x of serial: Dask's own loops, ~0.02 CPU s per worker and
0.03-0.07 s in the caller per second of wall time, the caller's merge and write ~0.4 s, and 4
processes switching on 2 cores);
with Dask's malloc setting 1 and 2 workers 22.90 and 24.76 CPU s (1.6x more than with the
fix), 3.59 million worker page faults against 5,900-8,300. A second run (load ~9): CPU s serial
16.29; 1, 2, 4 workers 17.90, 18.63, 19.53; Dask's malloc 25.50, 26.04; wall 23.2 s serial,
20.7, 19.7, 18.4 s with 1, 2, 4 workers (the other jobs held the cores in both runs: a speed-up
that grows with workers needs free cores). A third (load ~6.4): CPU s serial 14.44; 1, 2, 4
workers 13.60, 13.16, 14.26 (0.91-0.99x of serial); Dask's malloc 21.61, 23.43; wall 18.2 s
serial, 15.9, 16.2, 15.1 s; worker page faults 4,400-19,000 against 3.59 million.
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
from grokscope._threads import torch_threads

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
    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    with torch_threads(1):
        try:
            return _run(quick, tmp)
        finally:
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
