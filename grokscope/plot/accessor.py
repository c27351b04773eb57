"""The ``grok`` xarray accessor: ``ds.grok.measure`` and ``ds.grok.plot(ax=None)``.

Registered on import of :mod:`grokscope.plot`. It picks the plot function of a result from
``ds.attrs["measure"]`` (set by the engine on every stored result) through
:data:`grokscope.plot.PLOTS`; the plotting modules are imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import xarray as xr

from ..errors import ConfigError

__all__ = ["GrokAccessor"]


@xr.register_dataset_accessor("grok")
class GrokAccessor:
    """``ds.grok``: grokscope helpers on an analysis result.

    Examples
    --------
    >>> ds = run.results["nfa"]
    >>> ds.grok.measure
    'nfa'
    >>> ax = ds.grok.plot()          # the measure's main figure
    >>> ds.grok.plot("mixture_k")    # another of its figures, by short name
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def measure(self) -> str:
        """The measure that produced this dataset (``attrs["measure"]``)."""
        name = self._ds.attrs.get("measure")
        if not name:
            raise ConfigError(
                "this dataset has no 'measure' attribute: pass a stored result "
                "(run.results[name] or gs.analyze(...)[name]), or set ds.attrs['measure']"
            )
        return str(name)

    @property
    def plots(self) -> list[str]:
        """Names of the plot functions available for this measure (the first is the default)."""
        return [f.__name__ for f in self._functions()]

    def _functions(self) -> list[Callable[..., Any]]:
        from . import PLOTS

        name = self.measure
        if name not in PLOTS:
            raise ConfigError(
                f"no plot is registered for measure {name!r}; measures with plots: {sorted(PLOTS)}"
            )
        return PLOTS[name]

    def plot(self, which: str | int = 0, ax: Any = None, **kwargs: Any) -> Any:
        """Draw this result with its measure's plot function; returns the Axes.

        Parameters
        ----------
        which : int or str
            Index into :attr:`plots`, or a function name (``"plot_mixture_k"`` or
            ``"mixture_k"``). Default: the measure's main figure. An Axes passed here is
            taken as ``ax``.
        ax : Axes, optional
        **kwargs
            Passed to the plot function.
        """
        from matplotlib.axes import Axes

        if isinstance(which, Axes):
            which, ax = 0, which
        funcs = self._functions()
        if isinstance(which, int):
            if not -len(funcs) <= which < len(funcs):
                raise ConfigError(f"plot index {which} out of range; plots: {self.plots}")
            fn = funcs[which]
        else:
            wanted = which if which.startswith("plot_") else f"plot_{which}"
            match = [f for f in funcs if f.__name__ == wanted]
            if not match:
                raise ConfigError(f"no plot {which!r} for measure {self.measure!r}; plots: {self.plots}")
            fn = match[0]
        return fn(self._ds, ax, **kwargs)
