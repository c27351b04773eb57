"""Shared Jacobian helpers for the Jacobian measures (alignment, NFA) and the regulariser.

The *input* of a model, for every Jacobian measure, follows one convention: when the model
has ``embed_inputs``/``forward_from_input`` (grokscope's MLP and Transformer), the input is
``e = model.embed_inputs(x)`` (shape ``(n, d)``, float) and the map is
``model.forward_from_input(e)``; otherwise the input is ``x.float().flatten(1)`` and the map
is ``model(e.view(x.shape))``. The output is always flattened to logits ``(n, C)``.

Samples must be independent (no batch norm in train mode, no cross-sample mixing): every
batched Jacobian here differentiates the *sum over the batch* of each output, which gives
per-sample Jacobians exactly when the model treats samples independently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data import Data
from ..errors import ConfigError, DataError, GrokscopeError

__all__ = [
    "InputView",
    "JacobianError",
    "centroid",
    "chunks",
    "evaluation_inputs",
    "input_jacobian",
    "input_view",
    "model_dtype",
    "preactivation_jacobians",
]


class JacobianError(GrokscopeError):
    """A model could not be differentiated the way a Jacobian measure needs."""


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 when it has none)."""
    for p in model.parameters():
        if torch.is_floating_point(p):
            return p.dtype
    return torch.float32


def _as_logits(out: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise JacobianError(
            f"the model returned {type(out).__name__}, not a tensor: Jacobian measures need a "
            "model whose forward returns the logits tensor"
        )
    if out.shape[:1] != (n,):
        raise JacobianError(
            f"the model returned shape {tuple(out.shape)} for {n} samples: the first dim of "
            "the output must be the sample dim"
        )
    return out.reshape(n, -1)


@dataclass(frozen=True)
class InputView:
    """A model seen as a map from flat float inputs ``(n, d)`` to logits ``(n, C)``.

    Attributes
    ----------
    embed : callable
        ``embed(x) -> e``, ``x`` the raw inputs ``(n, *input_shape)``, ``e`` float ``(n, d)``.
    forward : callable
        ``forward(e) -> logits`` of shape ``(n, C)``.
    convention : str
        ``"embed_inputs"`` or ``"flatten"``: which input convention applies.
    """

    embed: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]
    convention: str


def input_view(model: nn.Module) -> InputView:
    """The model as a map from flat float inputs to ``(n, C)`` logits (see module doc)."""
    dtype = model_dtype(model)
    if hasattr(model, "embed_inputs") and hasattr(model, "forward_from_input"):

        def embed(x: torch.Tensor) -> torch.Tensor:
            e = model.embed_inputs(x)
            return e.reshape(e.shape[0], -1)

        def forward(e: torch.Tensor) -> torch.Tensor:
            return _as_logits(model.forward_from_input(e), e.shape[0])

        return InputView(embed, forward, "embed_inputs")

    shape: dict[str, tuple[int, ...]] = {}

    def embed_flat(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            raise JacobianError(
                f"inputs have dtype {x.dtype} (tokens?) and the model has no "
                "embed_inputs/forward_from_input: a Jacobian w.r.t. integer inputs does not "
                "exist. Give the model those two methods (see grokscope.models) or use float inputs"
            )
        shape["sample"] = tuple(x.shape[1:])
        return x.to(dtype).flatten(1)

    def forward_flat(e: torch.Tensor) -> torch.Tensor:
        if "sample" not in shape:
            raise JacobianError("InputView.forward called before embed: embed the inputs first")
        return _as_logits(model(e.view(e.shape[0], *shape["sample"])), e.shape[0])

    return InputView(embed_flat, forward_flat, "flatten")


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


def centroid(view: InputView, e: torch.Tensor) -> torch.Tensor:
    """``mu_x = J_x^T 1``: the gradient of the sum of all logits w.r.t. the input.

    One backward pass with ``grad_outputs = ones``.

    Parameters
    ----------
    view : InputView
    e : tensor, shape ``(n, d)``
        Embedded inputs.

    Returns
    -------
    tensor, shape ``(n, d)``
    """
    with torch.enable_grad():
        e = e.detach().requires_grad_(True)
        out = view.forward(e)
        (g,) = torch.autograd.grad(out, e, grad_outputs=torch.ones_like(out))
    return g


def input_jacobian(view: InputView, e: torch.Tensor) -> torch.Tensor:
    """Per-sample input Jacobians ``J_x = df/dx`` by ``torch.func.jacrev``.

    Differentiates ``sum_n f(e)_n`` (a ``(C,)`` vector) w.r.t. the whole batch, which gives the
    per-sample Jacobians because samples are independent; ``jacrev`` vmaps the ``C``
    vector-Jacobian products.

    Parameters
    ----------
    view : InputView
    e : tensor, shape ``(n, d)``

    Returns
    -------
    tensor, shape ``(n, C, d)``
    """

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
            out, list(targets), grad_outputs=basis, retain_graph=True, is_grads_batched=True
        )
    except RuntimeError:
        per_class = [
            torch.autograd.grad(out, list(targets), grad_outputs=b, retain_graph=True)
            for b in basis
        ]
        grads = tuple(torch.stack([pc[i] for pc in per_class]) for i in range(len(targets)))
    return [
        torch.zeros((k, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
        for g, t in zip(grads, targets)
    ]


def preactivation_jacobians(
    model: nn.Module,
    x: torch.Tensor,
    modules: dict[str, nn.Module],
    *,
    chunk: int | None = 1024,
    max_elements: int = 2**25,
) -> Iterator[tuple[slice, slice, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Per-sample Jacobians of the logits w.r.t. the outputs of chosen modules (general path).

    A forward hook captures each module's output ``z`` (and input ``h``); the logits are then
    differentiated w.r.t. every captured ``z`` by batched backward passes over the classes.

    Parameters
    ----------
    model : nn.Module
    x : tensor, shape ``(n, *input_shape)``
        Raw inputs.
    modules : dict of str to nn.Module
        The modules (usually ``nn.Linear``) whose outputs to differentiate; each must be called
        exactly once per forward.
    chunk : int or None
        Samples per forward pass.
    max_elements : int
        Bound on the elements of one batch of gradients (sets the number of classes per
        backward pass).

    Yields
    ------
    samples : slice
        The samples of this block.
    classes : slice
        The classes ``c`` of this block.
    grads : dict of str to tensor
        ``grads[name]`` of shape ``(k, n_chunk, *z.shape[1:])``: ``d f_c / d z`` per sample.
    inputs : dict of str to tensor
        ``inputs[name]``: the module input ``h`` of shape ``(n_chunk, *h.shape[1:])``.
    """
    view = input_view(model)
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {k: [] for k in modules}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise JacobianError(f"module {name!r} returned {type(output).__name__}, not a tensor")
            if not output.requires_grad:
                output.requires_grad_(True)  # a leaf: parameters and inputs need no grad
            captured[name].append((args[0].detach() if args else None, output))

        return hook

    handles = [m.register_forward_hook(make_hook(k)) for k, m in modules.items()]
    try:
        for sl in chunks(x.shape[0], chunk):
            for v in captured.values():
                v.clear()
            with torch.enable_grad():
                e = view.embed(x[sl]).detach()
                out = view.forward(e)
                for name, got in captured.items():
                    if len(got) != 1:
                        raise JacobianError(
                            f"module {name!r} was called {len(got)} times in one forward pass: "
                            "the NFA general path needs a module called exactly once"
                        )
                zs = [captured[k][0][1] for k in modules]
                if not out.requires_grad:
                    raise JacobianError(
                        "the logits do not depend on the chosen modules' outputs: check the "
                        f"layer names {list(modules)}"
                    )
                per_class = sum(z.numel() for z in zs)
                k = max(1, min(out.shape[1], max_elements // max(per_class, 1)))
                for cs in chunks(out.shape[1], k):
                    grads = _vjp_classes(out, zs, cs)
                    yield (
                        sl,
                        cs,
                        dict(zip(modules, grads)),
                        {name: captured[name][0][0] for name in modules},
                    )
    finally:
        for h in handles:
            h.remove()
        for v in captured.values():
            v.clear()
