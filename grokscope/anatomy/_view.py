"""A model seen through its anatomy: the operations measures use, by role.

:class:`ModelView` reads activations with forward hooks (``capture``), replaces a module's
input or output for the rest of a forward pass (``replace``: the general way to differentiate
at any role or to evaluate "the rest of the network"), and returns parameter tables in a fixed
orientation. Nothing here probes model attributes: every location comes from the anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, GrokscopeError
from ._roles import Anatomy, missing_role

__all__ = ["ModelView", "activation_fn", "model_output_tensor"]


def activation_fn(name: str):
    """The elementwise function called ``name`` (the names detection writes)."""
    fns = _ACTIVATIONS
    if name not in fns:
        raise ConfigError(f"unknown activation {name!r}; known: {sorted(fns)}")
    return fns[name]


_ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": lambda z: torch.nn.functional.gelu(z),
    "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "quadratic": lambda z: z * z,
    "erf": torch.erf,
    "leaky_relu": torch.nn.functional.leaky_relu,
    "elu": torch.nn.functional.elu,
    "softplus": torch.nn.functional.softplus,
    "identity": lambda z: z,
}


def model_output_tensor(out: Any) -> torch.Tensor:
    """The logits tensor of a forward's return value (a tensor, ``.logits``, or element 0)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(
        f"the model returned {type(out).__name__}: grokscope needs a forward returning the "
        "logits tensor (or an object with .logits, or a tuple whose first element is them)"
    )


class _Stop(Exception):
    """Ends a forward pass once every wanted activation is captured."""


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


class ModelView:
    """``model`` with its :class:`Anatomy`.

    Parameters
    ----------
    model : nn.Module
    anatomy : Anatomy
    """

    def __init__(self, model: nn.Module, anatomy: Anatomy) -> None:
        self.model = model
        self.anatomy = anatomy
        self._input_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ basics
    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating parameter (float32 when none)."""
        for p in self.model.parameters():
            if torch.is_floating_point(p):
                return p.dtype
        return torch.float32

    def module(self, path: str) -> nn.Module:
        """The submodule at dotted ``path`` ("" is the model itself)."""
        try:
            return self.model.get_submodule(path) if path else self.model
        except AttributeError as exc:
            raise ConfigError(
                f"the model has no module {path!r} (named in its anatomy); modules: "
                f"{[n for n, _ in self.model.named_modules() if n][:30]}"
            ) from exc

    def param(self, key: str) -> torch.Tensor:
        """The parameter (or buffer) ``key``, detached."""
        mod, _, leaf = key.rpartition(".")
        t = getattr(self.module(mod), leaf, None)
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"the model has no parameter {key!r} (named in its anatomy)")
        return t.detach()

    def logits(self, out: Any) -> torch.Tensor:
        """The output role applied to a forward's return value: ``(n, C)``."""
        t = model_output_tensor(out)
        pos = self.anatomy.output.get("position")
        if pos is not None:
            if t.ndim < 3:
                raise ConfigError(
                    f"the anatomy reads logits at position {pos} but the model returned shape "
                    f"{tuple(t.shape)} (no position axis): set anatomy={{'output': 'all'}}"
                )
            t = t[:, pos]
        t = t.reshape(t.shape[0], -1)
        cls_ = self.anatomy.output.get("classes")
        if cls_ is not None:
            t = t[:, int(cls_[0]) : int(cls_[1])]
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, C)`` of raw inputs ``x``."""
        return self.logits(self.model(x))

    # ------------------------------------------------------------------ hooks
    def capture(
        self, x: torch.Tensor, points: Sequence[tuple[str, str]], *, stop: bool = True
    ) -> list[torch.Tensor]:
        """Tensors at ``points`` (``(module, "input" | "output")``) during ``model(x)``.

        The first call of each module counts; with ``stop`` the forward pass ends as soon as
        every point is captured. Gradients flow if the caller enables them.
        """
        got: dict[int, torch.Tensor] = {}
        handles = []

        def make(i: int, at: str):
            def pre(_m, args, kwargs):
                if i not in got:
                    got[i] = _first_tensor(args, kwargs)
                    if stop and len(got) == len(points):
                        raise _Stop

            def post(_m, _args, out):
                if i not in got:
                    got[i] = out if isinstance(out, torch.Tensor) else model_output_tensor(out)
                    if stop and len(got) == len(points):
                        raise _Stop

            return pre if at == "input" else post

        try:
            for i, (path, at) in enumerate(points):
                mod = self.module(path)
                if at == "input":
                    handles.append(mod.register_forward_pre_hook(make(i, at), with_kwargs=True))
                elif at == "output":
                    handles.append(mod.register_forward_hook(make(i, at)))
                else:
                    raise ConfigError(f"a capture point is 'input' or 'output', got {at!r}")
            try:
                self.model(x)
            except _Stop:
                pass
        finally:
            for h in handles:
                h.remove()
        missing = [points[i] for i in range(len(points)) if got.get(i) is None]
        if missing:
            raise GrokscopeError(
                f"no tensor was seen at {missing} during a forward pass: the module is not "
                "called, or takes no tensor; correct the anatomy"
            )
        return [got[i] for i in range(len(points))]

    def replace(self, x: torch.Tensor, path: str, at: str, value: torch.Tensor) -> torch.Tensor:
        """Logits of ``model(x)`` with module ``path``'s input or output replaced by ``value``.

        ``value`` is reshaped to the replaced tensor's shape (it may be flattened per sample).
        """
        mod = self.module(path)

        def pre(_m, args, kwargs):
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    new = list(args)
                    new[i] = value.reshape(a.shape).to(a.dtype)
                    return tuple(new), kwargs
            for k, a in kwargs.items():
                if isinstance(a, torch.Tensor):
                    return args, {**kwargs, k: value.reshape(a.shape).to(a.dtype)}
            return None

        def post(_m, _args, out):
            return value.reshape(out.shape).to(out.dtype)

        if at == "input":
            handle = mod.register_forward_pre_hook(pre, with_kwargs=True)
        elif at == "output":
            handle = mod.register_forward_hook(post)
        else:
            raise ConfigError(f"a replacement point is 'input' or 'output', got {at!r}")
        try:
            return self.forward(x)
        finally:
            handle.remove()

    # ------------------------------------------------------------------ input role
    @property
    def input_module(self) -> str | None:
        return self.anatomy.input.get("module")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The input role's value ``e``, flattened per sample: ``(n, d)``, floating."""
        mod = self.input_module
        if mod is None:
            if not torch.is_floating_point(x):
                raise missing_role(
                    "input", "a Jacobian measure",
                    f"the inputs are {x.dtype} tokens, which cannot be differentiated, and no "
                    "module's output is named as the input",
                )
            e = x.to(self.dtype)
        else:
            (e,) = self.capture(x, [(mod, "output")])
            if not torch.is_floating_point(e):
                raise ConfigError(f"the input role {mod!r} outputs {e.dtype}, not floats")
        self._input_shape = tuple(e.shape[1:])
        return e.reshape(e.shape[0], -1)

    def forward_from_input(self, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, C)`` with the input role set to ``e`` ``(n, d)``.

        ``x`` are raw inputs of the same batch size (what the rest of the model sees besides
        the input role, e.g. positions); for a raw float input role it is unused.
        """
        if self._input_shape is None:
            self.embed(x[:1])
        shape = (e.shape[0], *self._input_shape)
        if self.input_module is None:
            return self.forward(e.reshape(shape))
        return self.replace(x, self.input_module, "output", e.reshape(shape))

    # ------------------------------------------------------------------ linear maps
    def weight(self, name: str) -> torch.Tensor:
        """The weight of linear map ``name`` as ``(out, in)``, detached."""
        lin = self.anatomy.linear_map(name)
        w = self.param(lin["weight"])
        return w if lin["orientation"] == "out_in" else w.T

    def bias(self, name: str) -> torch.Tensor | None:
        """The bias ``(out,)`` of linear map ``name``, or None."""
        key = self.anatomy.linear_map(name).get("bias")
        return None if not key else self.param(key)

    def map_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The input ``h`` of linear map ``name`` on ``x``: ``(n, [T,] in)``."""
        lin = self.anatomy.linear_map(name)
        if lin.get("module") is None:
            raise ConfigError(
                f"linear map {name!r} multiplies a tensor internal to its module, which cannot "
                "be read with a hook"
            )
        (h,) = self.capture(x, [(lin["module"], "input")])
        return h

    def apply_map(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """``W h + b`` of linear map ``name`` on ``h`` ``(..., in)``."""
        w = self.weight(name)
        z = h.to(w.dtype) @ w.T
        b = self.bias(name)
        return z if b is None else z + b

    # ------------------------------------------------------------------ hidden role
    def hidden_layer(self, layer: int = 0) -> dict[str, Any]:
        """The description of hidden layer ``layer`` (negative counts from the end)."""
        hidden = self.anatomy.hidden
        if not hidden:
            raise missing_role("hidden", "this measure")
        if not -len(hidden) <= layer < len(hidden):
            raise ConfigError(
                f"the model has {len(hidden)} hidden layer(s) ({[h['name'] for h in hidden]}); "
                f"got layer={layer}"
            )
        return hidden[layer]

    def hidden_activations(self, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """Post-activations of hidden layer ``layer`` on ``x``: ``(n, [T,] N)``."""
        h = self.hidden_layer(layer)
        cap = h.get("capture")
        if cap:
            (a,) = self.capture(x, [(cap["module"], cap["at"])])
            return a
        return activation_fn(h["activation"])(self.apply_map(h["in"], self.map_input(x, h["in"])))

    # ------------------------------------------------------------------ tables
    def _table(self, role: str) -> torch.Tensor:
        t = getattr(self.anatomy, role)
        if t is None:
            raise missing_role(role, "this measure")
        w = self.param(t["param"])
        return w if t["orientation"] == "rows" else w.T

    def embedding_table(self) -> torch.Tensor:
        """The token embedding ``(vocab, d)``: row ``k`` embeds token ``k``."""
        return self._table("embedding")

    def unembedding_table(self) -> torch.Tensor:
        """The readout table ``(C, d)`` restricted to the output role's classes."""
        u = self._table("unembedding")
        cls_ = self.anatomy.output.get("classes")
        return u if cls_ is None else u[int(cls_[0]) : int(cls_[1])]

    def neuron_to_logit(self, layer: int = -1) -> torch.Tensor:
        """The linear map from hidden layer ``layer``'s neurons to the logits, ``(C, N)``.

        The out-map's weight when it is the readout; else the unembedding times the out-map
        (a transformer's ``W_U^T W_out``, through the residual stream, ignoring any final
        normalisation).
        """
        h = self.hidden_layer(layer)
        if not h.get("out"):
            raise missing_role("hidden", "neuron_to_logit", f"hidden layer {h['name']!r} names no out map")
        if any(other.get("in") == h["out"] for other in self.anatomy.hidden):
            raise ConfigError(
                f"hidden layer {h['name']!r} feeds another hidden layer through {h['out']!r}: "
                "there is no linear map from its neurons to the logits"
            )
        w_out = self.weight(h["out"])  # (d, N)
        if h["out"] == self.anatomy.readout:
            cls_ = self.anatomy.output.get("classes")
            return w_out if cls_ is None else w_out[int(cls_[0]) : int(cls_[1])]
        u = self.unembedding_table()
        if u.shape[1] != w_out.shape[0]:
            raise ConfigError(
                f"the unembedding ({tuple(u.shape)}) does not read the space hidden layer "
                f"{h['name']!r} writes to ({w_out.shape[0]})"
            )
        return u @ w_out
