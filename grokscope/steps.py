"""Step selection: which stored checkpoints an analysis visits.

Steps are an explicit, monotone, usually non-uniform coordinate: selections are made on step
*values* (``"100:5000"``) or on positions in the stored sequence (``"every:5"``, ``"log:50"``),
never by assuming a uniform index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

StepSpec = None | str | int | slice | Sequence[int] | np.ndarray


def select_steps(available: np.ndarray, spec: StepSpec = None) -> np.ndarray:
    """The stored steps selected by ``spec``.

    Parameters
    ----------
    available : array of int, shape ``(n,)``
        The run's stored steps, strictly increasing.
    spec : None, str, int, slice or sequence of int
        ``None`` or ``"all"``: every stored step. ``"every:K"``: every K-th stored step (the
        last one always included). ``"log:N"``: about N steps spread log-uniformly over the step
        values (always including the first and last). ``"A:B"`` / ``"A:B:K"``: stored steps
        with ``A <= step <= B`` (every K-th of those). ``"0,100,200"`` or a sequence: exactly
        those steps (each must be stored). An int ``N``: same as ``"log:N"``. A ``slice`` of step
        values: like ``"A:B:K"``.

    Returns
    -------
    array of int64, strictly increasing, non-empty
    """
    steps = np.asarray(available, dtype=np.int64)
    if steps.size == 0:
        raise ConfigError("the run has no committed steps: record at least one checkpoint first")
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return steps
    if isinstance(spec, bool):
        raise ConfigError(f"invalid step selection {spec!r}")
    if isinstance(spec, int | np.integer):
        return _log_subset(steps, int(spec))
    if isinstance(spec, slice):
        return _value_range(steps, spec.start, spec.stop, spec.step)
    if isinstance(spec, str):
        return _parse(steps, spec.strip())
    wanted = np.asarray(list(spec), dtype=np.int64)
    return _exact(steps, wanted)


def _parse(steps: np.ndarray, text: str) -> np.ndarray:
    try:
        if text.startswith("every:"):
            k = int(text.split(":", 1)[1])
            if k < 1:
                raise ValueError
            idx = np.unique(np.r_[np.arange(0, len(steps), k), len(steps) - 1])
            return steps[idx]
        if text.startswith("log:"):
            return _log_subset(steps, int(text.split(":", 1)[1]))
        if ":" in text:
            parts = [p.strip() for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            vals = [int(p) if p else None for p in parts] + [None] * (3 - len(parts))
            return _value_range(steps, *vals)
        return _exact(steps, np.array([int(p) for p in text.split(",") if p.strip()], dtype=np.int64))
    except ValueError as exc:
        raise ConfigError(
            f"cannot read the step selection {text!r}: use 'all', 'every:K', 'log:N', 'A:B', "
            "'A:B:K' or a comma list of steps"
        ) from exc


def _log_subset(steps: np.ndarray, n: int) -> np.ndarray:
    if n < 1:
        raise ConfigError(f"a log-spaced selection needs at least 1 step, got {n}")
    if n >= len(steps):
        return steps
    lo, hi = float(steps[0]), float(steps[-1])
    targets = np.geomspace(lo + 1.0, hi + 1.0, n) - 1.0
    idx = np.unique(np.clip(np.searchsorted(steps, targets), 0, len(steps) - 1))
    return steps[np.unique(np.r_[0, idx, len(steps) - 1])]


def _value_range(steps: np.ndarray, start: int | None, stop: int | None, every: int | None) -> np.ndarray:
    lo = steps[0] if start is None else start
    hi = steps[-1] if stop is None else stop
    sel = steps[(steps >= lo) & (steps <= hi)]
    if every is not None:
        if every < 1:
            raise ConfigError(f"the stride of a step range must be >= 1, got {every}")
        sel = sel[::every]
    if sel.size == 0:
        raise ConfigError(
            f"no stored step lies in [{lo}, {hi}]; the run has steps {steps[0]}..{steps[-1]}"
        )
    return sel


def _exact(steps: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    missing = np.setdiff1d(wanted, steps)
    if missing.size:
        raise ConfigError(
            f"steps {missing[:10].tolist()} are not stored in this run; stored steps range "
            f"{steps[0]}..{steps[-1]} ({len(steps)} of them)"
        )
    if wanted.size == 0:
        raise ConfigError("the step selection is empty")
    return np.unique(wanted)
