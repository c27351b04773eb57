"""Kernel-regime escape: the empirical NTK over training (docs/methods.md section 7).

Mohamadi et al. (2024) argue grokking is the network leaving the kernel regime: the empirical
neural tangent kernel barely moves while the training set is fit, then changes sharply.

Definitions
-----------
- ``Theta_t = J J^T`` with ``J[i] = d f_o(x_i; theta_t) / d theta`` (all floating-point
  parameters, flattened), ``f_o`` the logit ``output`` (default 0, the first) of the model's
  ``output`` role (e.g. a sequence model's last position, a class slice), ``x_i`` the first
  ``n_points`` training inputs (deterministic). Computed with ``torch.func``:
  ``vmap(jacrev(f))`` over samples with ``functional_call`` of the model followed by the
  output role, ``chunk`` samples at a time; the products are accumulated in float64, one
  parameter tensor at a time.
- ``kernel_distance = 1 - <Theta_t, Theta_0>_F / (||Theta_t||_F ||Theta_0||_F)``: the
  headline, the scale-free kernel distance (0 when the kernel only changes scale, as under
  pure weight growth); ``Theta_0`` from ``ckpt.reference("first")``, computed once per run and
  cached in ``ckpt.state``.
- ``kernel_change = ||Theta_t - Theta_0||_F / ||Theta_0||_F``: the relative change, kept as a
  second output; it is dominated by the kernel's norm (weight growth alone makes it large).
- ``kernel_alignment = <Theta_t, Theta_0>_F / (||Theta_t||_F ||Theta_0||_F)`` (cosine,
  ``1 - kernel_distance``).
- ``param_linf = max |theta_i|``.
- ``linf_margin`` [ours] ``= mean_i margin_i / param_linf ** homogeneity`` over the same
  points, ``margin_i = f_{y_i}(x_i) - max_{c != y_i} f_c(x_i)``. For an ``L``-homogeneous
  network (e.g. ``L = 3`` for a bias-free two-layer network with quadratic activation) set
  ``homogeneity = L`` so the value is scale-invariant; the default 1 simply divides by the
  l-infinity norm. NaN for regression targets.
"""

from __future__ import annotations

import math

import torch
import xarray as xr
from torch.func import functional_call, jacrev, vmap

from ..anatomy import ModelView
from ..errors import ConfigError
from ._jacobian import as_view
from .curves import margins, named_float_params, param_vector_norms
from .registry import Checkpoint, register

__all__ = ["empirical_ntk", "kernel"]


def empirical_ntk(
    model: ModelView | torch.nn.Module, x: torch.Tensor, *, output: int = 0, chunk: int = 64
) -> torch.Tensor:
    """Empirical NTK of one output of ``model`` on inputs ``x``.

    Parameters
    ----------
    model : ModelView or nn.Module
        The model with its roles (a bare module gets its anatomy detected on ``x``); the
        logits are its ``output`` role, ``(n, C)``.
    x : Tensor, shape ``(n, *input_shape)``
    output : int
        Which output (logit) to differentiate.
    chunk : int
        Samples per ``vmap(jacrev)`` call.

    Returns
    -------
    Tensor, shape ``(n, n)``, float64
        ``Theta[i, j] = <grad_theta f_o(x_i), grad_theta f_o(x_j)>``.
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be a positive number of samples, got {chunk}")
    view = as_view(model, x)
    net = view.model
    params = {k: v.detach() for k, v in named_float_params(net).items()}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        out = view.logits(functional_call(net, p, (xi.unsqueeze(0),))).reshape(-1)
        return out[output]

    with torch.no_grad():
        n_out = view.forward(x[:1]).reshape(-1).shape[0]
    if not -n_out <= output < n_out:
        raise ConfigError(f"output={output} is out of range for a model with {n_out} outputs")
    jac_fn = vmap(jacrev(f), in_dims=(None, 0))
    blocks: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    for i in range(0, x.shape[0], chunk):
        jac = jac_fn(params, x[i : i + chunk])
        for k in params:
            blocks[k].append(jac[k].reshape(jac[k].shape[0], -1))
    theta = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
    for k in params:
        j = torch.cat(blocks[k]).double()
        blocks[k] = []
        theta += j @ j.T
    return theta


@register("kernel", kind="step", references=("first",))
def kernel(
    ckpt: Checkpoint,
    *,
    n_points: int = 64,
    output: int = 0,
    homogeneity: int = 1,
    chunk: int = 64,
) -> xr.Dataset:
    """Empirical-NTK distance and change from the first checkpoint, l-infinity norm and
    normalised margin.

    Parameters
    ----------
    ckpt : Checkpoint
        Uses ``ckpt.view``, ``ckpt.data.x_train`` and ``ckpt.reference_view("first")``.
    n_points : int
        The first ``n_points`` training inputs (all if fewer).
    output : int
        The logit (of the output role) whose NTK is taken.
    homogeneity : int
        Power of ``param_linf`` dividing the margin (see the module docstring).
    chunk : int
        Samples per Jacobian batch.

    Returns
    -------
    xr.Dataset
        Scalars ``kernel_distance`` (the headline: ``1 - cos(Theta_t, Theta_0)``),
        ``kernel_change`` (``||Theta_t - Theta_0||_F / ||Theta_0||_F``), ``kernel_alignment``
        (the cosine), ``kernel_norm`` (``||Theta_t||_F``), ``kernel_norm_ratio``
        (``||Theta_t||_F / ||Theta_0||_F``), ``param_linf``, ``margin`` (mean over the points),
        ``linf_margin``.
    """
    if n_points < 1:
        raise ConfigError(f"n_points must be >= 1, got {n_points}")
    data = ckpt.data
    n = min(n_points, data.x_train.shape[0])
    x = data.x_train[:n].to(ckpt.device)
    y = data.y_train[:n].to(ckpt.device)

    view = ckpt.view
    key = ("kernel_theta0", n, output)
    theta0 = ckpt.state.get(key)
    if theta0 is None:
        theta0 = empirical_ntk(ckpt.reference_view("first"), x, output=output, chunk=chunk)
        ckpt.state[key] = theta0
    theta = empirical_ntk(view, x, output=output, chunk=chunk)
    theta0 = theta0.to(theta.device)
    n0, nt = float(torch.linalg.norm(theta0)), float(torch.linalg.norm(theta))
    change = float(torch.linalg.norm(theta - theta0)) / n0 if n0 > 0 else float("nan")
    align = float((theta * theta0).sum()) / (n0 * nt) if n0 > 0 and nt > 0 else float("nan")

    _, linf, _ = param_vector_norms(ckpt.model)
    margin = float("nan")
    if not torch.is_floating_point(y) and y.ndim == 1:
        with torch.no_grad():
            logits = view.forward(x).double()
        if logits.shape[1] >= 2:
            margin = float(margins(logits, y).mean())
    scale = linf**homogeneity
    linf_margin = margin / scale if scale > 0 and math.isfinite(margin) else float("nan")

    ds = xr.Dataset(
        {
            "kernel_distance": ((), 1.0 - align),
            "kernel_change": ((), change),
            "kernel_alignment": ((), align),
            "kernel_norm": ((), nt),
            "kernel_norm_ratio": ((), nt / n0 if n0 > 0 else float("nan")),
            "param_linf": ((), linf),
            "margin": ((), margin),
            "linf_margin": ((), linf_margin),
        }
    )
    ds.attrs.update(
        n_points_used=int(n),
        points="the first n_points training inputs",
        ntk="J J^T of one logit (output role) w.r.t. all floating-point parameters "
        "(torch.func vmap(jacrev))",
        linf_margin_definition="mean correct-class margin / param_linf ** homogeneity",
        reference="first",
        headline="kernel_distance = 1 - <Theta_t, Theta_0>_F / (||Theta_t||_F ||Theta_0||_F): "
        "scale-free; kernel_change = ||Theta_t - Theta_0||_F / ||Theta_0||_F grows with the "
        "kernel's norm (weight growth) even when its shape is unchanged",
    )
    return ds
