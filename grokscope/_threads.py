"""torch CPU threads: set them for a block, and pick the count by measuring (``"auto"``).

Why measure: the best count depends on the model, the batch and the machine's load, and the
wrong one is costly both ways. On the shared 2-core machines here, intra-op threads that wait
for a busy core spin: training the README's ``p = 97`` MLP took 280 s with torch's default
(2 threads) and 36 s with one; on the same machine idle, 2 threads were 1.6x *faster* than one
(5.2 ms vs 8.6 ms a step). On a many-core machine a wide model gains from 8-16 threads while
a tiny one still runs best on 1-2. No rule of thumb covers all of these, a one-second
measurement does.

:func:`calibrate` times a workload (the caller's forward+backward pass of the actual model
on the actual batch shape) at 1, 2, 4, ... threads up to the CPUs this process may use (plus
torch's current setting), in interleaved rounds (so a burst of load from another process
hits every count alike), and picks the fastest, preferring fewer threads unless more are
clearly faster (``margin``): a count that barely wins on an idle machine is the one that
collapses under load. Results are cached per key (model shape, batch, device) for the
process, so a sweep of identical runs calibrates once.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import ConfigError

#: what a ``threads``/``num_threads`` argument may be: a count, ``"auto"``, or ``None``
#: (leave torch's setting alone)
Threads = int | Literal["auto"] | None

#: total seconds a calibration aims to spend timing at most (warm-up calls come on top) ...
BUDGET_S = 1.0
#: ... and no more than this many calls' worth (a tiny model is timed in well under a second)
BUDGET_CALLS = 200
#: ... or this share of the job, when the caller says how many calls the job makes
SHARE = 0.02
#: a count slower than this many times the best so far is timed no more (under load a
#: spinning count is 10-20x slower: timing it five times would cost more than it tells)
PRUNE = 2.0
#: ... but at least this long (so each sample spans many timer ticks and scheduler slices)
MIN_BUDGET_S = 0.1
#: more threads must be at least this much faster (relative) to be preferred to fewer
MARGIN = 0.1
#: interleaved timing rounds (each round times every candidate once)
ROUNDS = 5

_CACHE: dict[Hashable, Calibration] = {}


@dataclass(frozen=True)
class Calibration:
    """The outcome of :func:`calibrate`: the chosen count and the median seconds per call."""

    threads: int
    seconds: dict[int, float] = field(default_factory=dict)
    cached: bool = False

    def summary(self) -> str:
        """E.g. ``"threads: 1 (1: 8.6 ms, 2: 5.2 ms)"``."""
        times = ", ".join(f"{n}: {s * 1e3:.3g} ms" for n, s in sorted(self.seconds.items()))
        return f"threads: {self.threads} ({times})" + (" [cached]" if self.cached else "")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def candidates(max_threads: int | None = None) -> list[int]:
    """1, 2, 4, ... below ``max_threads`` (default :func:`available_cpus`), ``max_threads``
    itself and torch's current setting (when it fits)."""
    top = available_cpus() if max_threads is None else max(1, int(max_threads))
    out = {top}
    n = 1
    while n < top:
        out.add(n)
        n *= 2
    current = torch.get_num_threads()
    if current <= top:
        out.add(current)
    return sorted(out)


def check_threads(value: Any, what: str = "num_threads") -> Threads:
    """``value`` as a thread setting: an int >= 1, ``"auto"`` or ``None`` (a digit string,
    as the CLI passes it, becomes an int); ConfigError otherwise."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be 'auto', None or an integer >= 1, got {value!r}")
    return value


def cli_threads(text: str) -> int | str:
    """argparse ``type=`` for ``--threads N|auto``."""
    import argparse

    try:
        return check_threads(text, "--threads")  # type: ignore[return-value]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextmanager
def torch_threads(n: int | None, *, blas: bool = False) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (``None``: leave the setting alone).

    ``blas=True`` also limits the BLAS libraries numpy/scipy/scikit-learn use (through
    threadpoolctl, when installed): torch's setting does not reach numpy's OpenBLAS, whose
    threads spin on a busy machine just the same.

    On a loaded machine with few cores, intra-op threads that wait for a busy core spin: one
    thread was measured 2-15x faster than two on the shared 2-core machines here.
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    limiter = None
    if blas:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: only torch's threads are set then
            threadpool_limits = None
        if threadpool_limits is not None:
            limiter = threadpool_limits(limits=n, user_api="blas")
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if limiter is not None:
            limiter.restore_original_limits()


def calibrate(work: Callable[[], object], *, key: Hashable | None = None,
              max_threads: int | None = None, budget_s: float = BUDGET_S,
              margin: float = MARGIN, rounds: int = ROUNDS,
              expected_calls: int | None = None) -> Calibration:
    """Time ``work()`` at each of :func:`candidates` and pick the fastest count.

    Parameters
    ----------
    work : callable
        One unit of the real workload (e.g. a forward+backward pass); called many times, so
        it must have no lasting effect.
    key : hashable, optional
        Cache key (e.g. model shape, batch shape, device); ``None`` never caches.
    max_threads : int, optional
        The largest count tried (default: the CPUs this process may use).
    budget_s : float
        Seconds to spend timing at most, about (fewer when :data:`BUDGET_CALLS` calls take
        less, never under :data:`MIN_BUDGET_S`; each candidate also gets one untimed warm-up
        call, and at least one timed sample however slow ``work`` is).
    margin : float
        A larger count is chosen only when its median is more than ``margin`` (relative)
        below that of every smaller count's.
    rounds : int
        Interleaved timing rounds (the median over rounds is compared). A count more than
        :data:`PRUNE` times slower than the best after a round is dropped from later rounds.
    expected_calls : int, optional
        About how many ``work()``-sized calls the job itself makes (e.g. training steps):
        timing then takes at most :data:`SHARE` of that, so a short job is not dominated by
        its calibration (never under :data:`MIN_BUDGET_S`).

    Returns
    -------
    Calibration
        ``threads`` (the choice) and ``seconds`` ({count: median seconds per call}).
    """
    cands = candidates(max_threads)
    full_key = None if key is None else (key, tuple(cands))
    if full_key is not None and full_key in _CACHE:
        hit = _CACHE[full_key]
        return Calibration(hit.threads, dict(hit.seconds), cached=True)
    if len(cands) == 1:
        result = Calibration(cands[0], {})
    else:
        calls = BUDGET_CALLS if expected_calls is None else max(1.0, SHARE * expected_calls)
        result = _measure(work, cands, budget_s=budget_s, margin=margin, rounds=max(1, rounds),
                          budget_calls=calls)
    if full_key is not None:
        _CACHE[full_key] = result
    return result


def _measure(work: Callable[[], object], cands: list[int], *, budget_s: float, margin: float,
             rounds: int, budget_calls: float = BUDGET_CALLS) -> Calibration:
    previous = torch.get_num_threads()
    try:
        warm = {}
        for n in cands:  # warm-up: thread pools spin up, allocator caches fill
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            work()
            warm[n] = time.perf_counter() - t0
        # calls per sample so that all rounds over all counts fit the budget
        fastest = max(min(warm.values()), 1e-6)
        budget_s = min(budget_s, max(MIN_BUDGET_S, budget_calls * fastest))
        per_sample = budget_s / (rounds * len(cands))
        samples: dict[int, list[float]] = {n: [] for n in cands}
        start = time.perf_counter()
        live = list(cands)
        for r in range(rounds):
            order = live[r % len(live):] + live[:r % len(live)]  # rotate: no count always first
            for n in order:  # each sample: as many calls as fit per_sample (at least one)
                torch.set_num_threads(n)
                calls, t0 = 0, time.perf_counter()
                while True:
                    work()
                    calls += 1
                    elapsed = time.perf_counter() - t0
                    if elapsed >= per_sample:
                        break
                samples[n].append(elapsed / calls)
            medians = {n: statistics.median(samples[n]) for n in live}
            best = min(medians.values())
            live = [n for n in live if medians[n] <= PRUNE * best]
            if time.perf_counter() - start > 2 * budget_s:  # slow work: stop after whole rounds
                break
    finally:
        torch.set_num_threads(previous)
    seconds = {n: statistics.median(v) for n, v in samples.items()}
    return Calibration(choose(seconds, margin), seconds)


def choose(seconds: dict[int, float], margin: float = MARGIN) -> int:
    """The smallest count whose time is within ``margin`` of the best: fewer threads win
    ties (they cost less to the machine's other users and collapse less under load)."""
    best = min(seconds.values())
    return min(n for n, s in seconds.items() if s <= best * (1 + margin))


def model_key(model: torch.nn.Module, x: torch.Tensor, *extra: Hashable) -> tuple:
    """A cache key for ``model`` on batch ``x``: class, parameter shapes/dtypes, batch shape,
    dtype and device."""
    params = tuple((name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters())
    return (type(model).__module__, type(model).__qualname__, params, tuple(x.shape),
            str(x.dtype), str(x.device), *extra)


def forward_backward(model: torch.nn.Module, x: torch.Tensor,
                     loss: Callable[[Any], torch.Tensor] | None = None) -> Callable[[], None]:
    """A workload for :func:`calibrate`: ``loss(model(x)).backward()`` (default loss: the sum
    of the first floating output) with gradients discarded.

    Callers run it under :func:`calibration_guard`, which leaves the model, its gradients and
    the random-number state as they were.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def first_float(out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        values = list(out.values()) if isinstance(out, dict) else (
            list(out) if isinstance(out, list | tuple) else [])
        for v in values:
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v
        raise TypeError(f"the model's output ({type(out).__name__}) holds no float tensor")

    def work() -> None:
        out = model(x)
        value = loss(out) if loss is not None else first_float(out).float().sum()
        if value.requires_grad and params:
            grads = torch.autograd.grad(value, params, allow_unused=True)
            del grads

    return work


@contextmanager
def calibration_guard(model: torch.nn.Module) -> Iterator[None]:
    """Calibrate without side effects: eval mode (no batch-norm statistics updated), the
    CPU random-number state restored (dropout draws nothing that training would see)."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        model.train(was_training)


def auto_threads(threads: Threads, model: torch.nn.Module, x: torch.Tensor, *,
                 device: torch.device | str = "cpu",
                 loss: Callable[[Any], torch.Tensor] | None = None,
                 max_rows: int | None = None, expected_calls: int | None = None,
                 key_extra: tuple = ()) -> tuple[int | None, Calibration | None]:
    """Resolve a thread setting for work on ``model`` with batches like ``x``.

    ``None`` and ints are returned as they are. ``"auto"`` on a CPU device calibrates
    forward+backward passes (``x`` cut to ``max_rows`` rows; ``expected_calls``: about how
    many such passes the job makes, see :func:`calibrate`); on a GPU the CPU threads barely
    matter and torch's setting is left alone (``None``).

    Returns
    -------
    (threads, calibration)
        The count to use (``None``: leave torch's setting) and the calibration, if one ran.
    """
    threads = check_threads(threads)
    if threads != "auto":
        return threads, None
    if torch.device(device).type != "cpu":
        return None, None
    if max_rows is not None and x.shape[0] > max_rows:
        x = x[:max_rows]
    with calibration_guard(model):
        cal = calibrate(forward_backward(model, x, loss), expected_calls=expected_calls,
                        key=model_key(model, x, loss is None, *key_extra))
    return cal.threads, cal
