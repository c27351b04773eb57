"""Shared Jacobian helpers for the Jacobian measures (alignment, NFA) and the regulariser.

Models are seen only through their anatomy (a :class:`~grokscope.anatomy.ModelView`). The
*input* of every Jacobian measure is the model's ``input`` role: ``e = view.embed(x)``, the
output of a module (a token embedding: ``"output of module 'embed'"``) or the raw float input
(``"raw float input"``), flattened per sample to ``(n, d)``; the map is
``view.forward_from_input(e, x)``, whose logits ``(n, C)`` follow the ``output`` role (last
position, class slice).

Samples must be independent (no batch norm in train mode, no cross-sample mixing): every
batched Jacobian here differentiates the *sum over the batch* of each output, which gives
per-sample Jacobians exactly when the model treats samples independently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..anatomy import ModelView, detect
from ..data import Data
from ..errors import ConfigError, DataError, GrokscopeError

__all__ = [
    "InputView",
    "JacobianError",
    "as_view",
    "centroid",
    "chunks",
    "evaluation_inputs",
    "input_convention",
    "input_jacobian",
    "input_view",
    "preactivation_jacobians",
]


class JacobianError(GrokscopeError):
    """A model could not be differentiated the way a Jacobian measure needs."""


def as_view(model: nn.Module | ModelView, x: torch.Tensor) -> ModelView:
    """``model`` itself when it is a :class:`ModelView`; else the module with the anatomy
    detected from a probe pass on a few rows of ``x`` (the convenience path of the public
    helpers: measures receive their view from the checkpoint)."""
    if isinstance(model, ModelView):
        return model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module or a ModelView, got {type(model).__name__}")
    probe = x[: max(2, min(4, x.shape[0]))]
    return ModelView(model, detect(model, probe))


def input_convention(view: ModelView) -> str:
    """How the input role is read: ``"output of module 'embed'"`` or ``"raw float input"``."""
    mod = view.anatomy.input.get("module")
    return "raw float input" if mod is None else f"output of module {mod!r}"


def _as_logits(out: torch.Tensor, n: int) -> torch.Tensor:
    if out.ndim != 2 or out.shape[0] != n:
        raise JacobianError(
            f"the output role gave shape {tuple(out.shape)} for {n} samples: Jacobian measures "
            "need logits (n, C); set anatomy={'output': ...}"
        )
    return out


@dataclass(frozen=True)
class InputView:
    """One batch of a model seen as a map from its flat input role ``(n, d)`` to ``(n, C)``.

    Attributes
    ----------
    e : tensor, shape ``(n, d)``
        The input role's value on the batch (detached, floating).
    forward : callable
        ``forward(e) -> logits`` ``(n, C)``; ``e`` of the batch's size (the rest of the model,
        e.g. positions, sees the batch's raw inputs).
    convention : str
        ``"output of module '<path>'"`` or ``"raw float input"``.
    """

    e: torch.Tensor
    forward: Callable[[torch.Tensor], torch.Tensor]
    convention: str


def input_view(view: ModelView, x: torch.Tensor) -> InputView:
    """The batch ``x`` of ``view``'s model as a map from its input role to logits."""
    with torch.no_grad():
        e = view.embed(x).detach()

    def forward(inp: torch.Tensor) -> torch.Tensor:
        return _as_logits(view.forward_from_input(inp, x), inp.shape[0])

    return InputView(e, forward, input_convention(view))


def chunks(n: int, size: int | None) -> Iterator[slice]:
    """Slices ``[0:size], [size:2 size], ...`` covering ``range(n)`` (one slice if size is None)."""
    if size is not None and int(size) < 1:
        raise ConfigError(f"chunk must be a positive integer or None, got {size!r}")
    step = n if size is None else int(size)
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


def evaluation_inputs(data: Data, split: str, max_points: int | None) -> torch.Tensor:
    """The first ``max_points`` inputs of ``split`` (``"train"``, ``"test"`` or ``"all"``).

    Returns
    -------
    tensor, shape ``(n, *input_shape)``
    """
    if split == "all":
        x = torch.cat([data.x_train, data.x_test], dim=0)
    elif split in ("train", "test"):
        x = data.split(split)[0]
    else:
        raise ConfigError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if max_points is not None:
        if int(max_points) < 1:
            raise ConfigError(f"max_points must be a positive integer or None, got {max_points!r}")
        x = x[: int(max_points)]
    if x.shape[0] == 0:
        raise DataError(f"the {split!r} split has no samples: choose another split")
    return x


def centroid(view: InputView, e: torch.Tensor | None = None) -> torch.Tensor:
    """``mu_x = J_x^T 1``: the gradient of the sum of all logits w.r.t. the input.

    One backward pass with ``grad_outputs = ones``.

    Parameters
    ----------
    view : InputView
    e : tensor, shape ``(n, d)``, optional
        Inputs (default ``view.e``).

    Returns
    -------
    tensor, shape ``(n, d)``
    """
    e = view.e if e is None else e
    with torch.enable_grad():
        e = e.detach().requires_grad_(True)
        out = view.forward(e)
        (g,) = torch.autograd.grad(out, e, grad_outputs=torch.ones_like(out))
    return g


def input_jacobian(view: InputView, e: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample input Jacobians ``J_x = df/dx`` by ``torch.func.jacrev``.

    Differentiates ``sum_n f(e)_n`` (a ``(C,)`` vector) w.r.t. the whole batch, which gives the
    per-sample Jacobians because samples are independent; ``jacrev`` vmaps the ``C``
    vector-Jacobian products.

    Parameters
    ----------
    view : InputView
    e : tensor, shape ``(n, d)``, optional
        Inputs (default ``view.e``).

    Returns
    -------
    tensor, shape ``(n, C, d)``
    """
    e = view.e if e is None else e

    def summed(inp: torch.Tensor) -> torch.Tensor:
        return view.forward(inp).sum(0)

    # torch.func transforms ignore an outer no_grad; it only stops tracking the parameters
    with torch.no_grad():
        jac = torch.func.jacrev(summed)(e.detach())  # (C, n, d)
    return jac.permute(1, 0, 2)


def _vjp_classes(
    out: torch.Tensor, targets: Sequence[torch.Tensor], classes: slice
) -> list[torch.Tensor]:
    """Gradients of ``out[:, c]`` (summed over samples) w.r.t. each target, for ``c`` in classes.

    Returns one tensor per target of shape ``(k, *target.shape)``, ``k`` the number of classes.
    Uses one vmapped backward (``is_grads_batched``); falls back to a loop over classes when an
    operation of the model has no batching rule.
    """
    n, n_out = out.shape
    k = classes.stop - classes.start
    basis = torch.zeros(k, n, n_out, dtype=out.dtype, device=out.device)
    basis[torch.arange(k), :, torch.arange(classes.start, classes.stop)] = 1.0
    try:
        grads = torch.autograd.grad(
            out, list(targets), grad_outputs=basis, retain_graph=True, is_grads_batched=True,
            allow_unused=True,
        )
    except RuntimeError:
        per_class = [
            torch.autograd.grad(out, list(targets), grad_outputs=b, retain_graph=True,
                                allow_unused=True)
            for b in basis
        ]
        grads = tuple(
            None if per_class[0][i] is None else torch.stack([pc[i] for pc in per_class])
            for i in range(len(targets))
        )
    return [
        torch.zeros((k, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
        for g, t in zip(grads, targets)
    ]


def _first_tensor_slot(args: tuple, kwargs: dict) -> tuple[int | str, torch.Tensor] | None:
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            return i, a
    for k, a in kwargs.items():
        if isinstance(a, torch.Tensor):
            return k, a
    return None


def preactivation_jacobians(
    view: ModelView,
    x: torch.Tensor,
    points: dict[str, tuple[str, str]],
    *,
    chunk: int | None = 1024,
    max_elements: int = 2**25,
    per_sample: dict[str, tuple[str, tuple[int, ...]]] | None = None,
) -> Iterator[tuple[slice, slice, dict[str, torch.Tensor]]]:
    """Per-sample Jacobians of the logits w.r.t. tensors inside the model (general path).

    Each point is ``(module path, "output" | "input")``:

    ``"output"``
        a forward hook captures the module's output ``z``; the gradient is w.r.t. ``z`` (the
        total derivative: every path from ``z`` to the logits);
    ``"input"``
        a forward pre-hook feeds the module ``h + delta`` instead of its input ``h``, with
        ``delta`` a zero leaf tensor; the gradient w.r.t. ``delta`` is the derivative of the
        logits w.r.t. ``h`` *through that module only* (other uses of ``h``, e.g. a residual
        connection around it, are not differentiated), and gradients w.r.t. other points
        upstream still flow through ``h``.

    The logits (the output role) are differentiated w.r.t. every point by class-batched
    backward passes. ``per_sample`` adds parameters replaced (``functional_call``) by one
    copy per sample (and per position): the gradient w.r.t. a bias ``b`` added to ``z = W h``
    that way is ``d f / d z`` per sample, even where ``z`` itself has no hook point.

    Parameters
    ----------
    view : ModelView
    x : tensor, shape ``(n, *input_shape)``
        Raw inputs.
    points : dict of str to (str, str)
        Name -> (module path, ``"output"`` or ``"input"``). Each module must be called exactly
        once per forward pass.
    chunk : int or None
        Samples per forward pass.
    max_elements : int
        Bound on the elements of one batch of gradients (sets the number of classes per
        backward pass).
    per_sample : dict of str to (str, tuple of int), optional
        Name -> (parameter key, dims between the sample dim and the parameter's own, e.g. the
        positions ``(T,)``): the parameter ``p`` is replaced by ``p`` expanded to
        ``(n_chunk, *dims, *p.shape)``, a leaf whose gradient is yielded under that name.

    Yields
    ------
    samples : slice
        The samples of this block.
    classes : slice
        The classes ``c`` of this block.
    grads : dict of str to tensor
        ``grads[name]`` of shape ``(k, n_chunk, *t.shape[1:])``: ``d f_c / d t`` per sample,
        ``t`` the point's tensor.
    """
    per_sample = dict(per_sample or {})
    clash = sorted(set(per_sample) & set(points))
    if clash:
        raise ConfigError(f"names {clash} are both points and per-sample parameters")
    for name, (_path, at) in points.items():
        if at not in ("input", "output"):
            raise ConfigError(f"point {name!r}: 'at' must be 'input' or 'output', got {at!r}")
    captured: dict[str, list[torch.Tensor]] = {k: [] for k in points}

    def make_hook(name: str, at: str) -> Callable[..., object]:
        def post(_mod: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise JacobianError(f"module {points[name][0]!r} returned {type(output).__name__}, "
                                    "not a tensor")
            if not output.requires_grad:
                output.requires_grad_(True)  # a leaf: parameters and inputs need no grad
            captured[name].append(output)

        def pre(_mod: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            slot = _first_tensor_slot(args, kwargs)
            if slot is None:
                raise JacobianError(f"module {points[name][0]!r} was called without a tensor input")
            key, h = slot
            if not torch.is_floating_point(h):
                raise JacobianError(f"module {points[name][0]!r} takes {h.dtype} input, not floats")
            delta = torch.zeros_like(h, requires_grad=True)
            captured[name].append(delta)
            if isinstance(key, int):
                new = list(args)
                new[key] = h + delta
                return tuple(new), kwargs
            return args, {**kwargs, key: h + delta}

        return post if at == "output" else pre

    handles = []
    try:
        for name, (path, at) in points.items():
            mod = view.module(path)
            if at == "output":
                handles.append(mod.register_forward_hook(make_hook(name, at)))
            else:
                handles.append(mod.register_forward_pre_hook(make_hook(name, at), with_kwargs=True))
        for sl in chunks(x.shape[0], chunk):
            for v in captured.values():
                v.clear()
            with torch.enable_grad():
                copies = {}
                for name, (key, dims) in per_sample.items():
                    p = view.param(key)
                    n_sl = sl.stop - sl.start
                    copies[name] = p.expand(n_sl, *dims, *p.shape).clone().requires_grad_(True)
                if copies:
                    new = {per_sample[k][0]: v for k, v in copies.items()}
                    out = view.logits(torch.func.functional_call(view.model, new, (x[sl],)))
                else:
                    out = view.forward(x[sl])
                for name, got in captured.items():
                    if len(got) != 1:
                        raise JacobianError(
                            f"module {points[name][0]!r} was called {len(got)} times in one "
                            "forward pass: the NFA general path needs a module called exactly once"
                        )
                ts = [captured[k][0] for k in points] + [copies[k] for k in per_sample]
                if not out.requires_grad:
                    raise JacobianError(
                        "the logits do not depend on the chosen tensors: check the layer names "
                        f"{list(points)}"
                    )
                per_class = sum(t.numel() for t in ts)
                k = max(1, min(out.shape[1], max_elements // max(per_class, 1)))
                for cs in chunks(out.shape[1], k):
                    grads = _vjp_classes(out, ts, cs)
                    yield sl, cs, dict(zip([*points, *per_sample], grads))
    finally:
        for h in handles:
            h.remove()
        for v in captured.values():
            v.clear()
