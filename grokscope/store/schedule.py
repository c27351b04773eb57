"""Which training steps to record: step 0, log-spaced early, then every ``every`` steps."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError


class Schedule:
    """A recording schedule.

    Step 0 is always due; steps up to ``log_until`` are due when they are
    ``round(10 ** (k / per_decade))`` for an integer ``k >= 0`` (about ``per_decade`` steps per
    decade, fewer where rounding merges them); after ``log_until`` every multiple of ``every``.

    Parameters
    ----------
    log_until : int
        Last step of the log-spaced phase.
    per_decade : int
        Log-spaced points per decade.
    every : int
        Spacing after ``log_until``.

    Examples
    --------
    >>> Schedule(log_until=100, per_decade=4, every=50).steps(300).tolist()
    [0, 1, 2, 3, 6, 10, 18, 32, 56, 100, 150, 200, 250, 300]
    """

    def __init__(self, log_until: int = 1000, per_decade: int = 20, every: int = 100) -> None:
        for name, value in (("log_until", log_until), ("per_decade", per_decade), ("every", every)):
            if not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"Schedule({name}={value!r}): must be a positive integer")
        self.log_until = int(log_until)
        self.per_decade = int(per_decade)
        self.every = int(every)
        kmax = math.floor(self.per_decade * math.log10(self.log_until)) + 1
        self._log = frozenset(
            s for s in (self._at(k) for k in range(kmax + 1)) if s <= self.log_until
        )

    def _at(self, k: int) -> int:
        return int(round(10 ** (k / self.per_decade)))

    def due(self, step: int) -> bool:
        """Whether ``step`` is recorded (O(1))."""
        if step == 0:
            return True
        if step < 0:
            return False
        if step <= self.log_until:
            return step in self._log
        return step % self.every == 0

    def steps(self, max_step: int) -> np.ndarray:
        """All due steps in ``[0, max_step]``, shape ``(n,)`` int64, increasing."""
        early = sorted(s for s in self._log | {0} if s <= max_step)
        start = (self.log_until // self.every + 1) * self.every
        late = np.arange(start, max_step + 1, self.every, dtype=np.int64)
        return np.concatenate([np.asarray(early, dtype=np.int64), late])

    def __repr__(self) -> str:
        return (
            f"Schedule(log_until={self.log_until}, per_decade={self.per_decade}, "
            f"every={self.every})"
        )

    def to_dict(self) -> dict:
        return {"log_until": self.log_until, "per_decade": self.per_decade, "every": self.every}
