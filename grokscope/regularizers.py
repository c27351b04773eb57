"""Training-time regularisers.

:func:`jacobian_norm_penalty` is GrokAlign's Jacobian regulariser (Walker et al. 2025;
docs/methods.md section 3): the mean over the batch of ``||J_x||_F``, estimated with random unit
output vectors. The trainer adds ``lambda * jacobian_norm_penalty(model, x)`` to the loss
(lambda 1e-3 for cross-entropy, 1e-4 for MSE in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from .anatomy import ModelView
from .errors import ConfigError
from .measures._jacobian import as_view

__all__ = ["jacobian_norm_penalty"]


def jacobian_norm_penalty(
    model: nn.Module | ModelView,
    x: torch.Tensor,
    *,
    n_proj: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random-projection estimate of ``mean_x ||J_x||_F``, differentiable in the parameters.

    For each sample, ``m = n_proj`` random unit vectors ``v_i`` in ``R^C`` give
    ``sqrt((C/m) sum_i |J_x^T v_i|^2)``, whose square is an unbiased estimate of
    ``||J_x||_F^2`` (``E|J^T v|^2 = ||J||_F^2 / C`` for ``v`` uniform on the sphere). Each
    ``J_x^T v_i`` is one vector-Jacobian product over the whole batch (samples independent);
    the graph is kept (``create_graph=True``) so the penalty can be back-propagated.

    The input follows the Jacobian-measure convention: the model's ``input`` role
    (``view.embed(x)``: the output of its token embedding, before any positional embedding,
    or the raw float input), flattened; the logits follow its ``output`` role.

    Parameters
    ----------
    model : ModelView or nn.Module
        The model with its roles; a bare module gets its anatomy detected on ``x`` at every
        call (a training loop should build the view once).
    x : tensor, shape ``(n, *input_shape)``
        A batch of raw inputs.
    n_proj : int
        Number of random projections ``m`` per sample.
    generator : torch.Generator, optional
        Source of the random vectors (on ``x``'s device).

    Returns
    -------
    tensor, shape ``()``
        The batch mean of the per-sample estimates.
    """
    if int(n_proj) < 1:
        raise ConfigError(f"n_proj must be a positive integer, got {n_proj!r}")
    view = as_view(model, x)
    with torch.enable_grad():
        e = view.embed(x)
        if not e.requires_grad:
            e = e.detach().requires_grad_(True)
        out = view.forward_from_input(e, x)  # (n, C)
        n, n_out = out.shape
        total = torch.zeros(n, dtype=out.dtype, device=out.device)
        for _ in range(int(n_proj)):
            v = torch.randn(n, n_out, dtype=out.dtype, device=out.device, generator=generator)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
            (jtv,) = torch.autograd.grad(out, e, grad_outputs=v, create_graph=True)
            total = total + jtv.reshape(n, -1).pow(2).sum(1)
        est = (total * (n_out / int(n_proj))).clamp_min(1e-24).sqrt()
    return est.mean()
