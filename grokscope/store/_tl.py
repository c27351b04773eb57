"""TransformerLens runs: the grokking demo's single file, and TransformerLens state dicts.

TransformerLens's grokking demo (``demos/Grokking_Demo.ipynb``) trains a one-layer
``HookedTransformer`` on ``a + b mod p`` and saves everything in one ``torch.save`` dict::

    {"model": state_dict, "config": model.cfg, "checkpoints": [state_dict, ...],
     "checkpoint_epochs": [99, 199, ...], "train_losses": [...], "test_losses": [...],
     "train_indices": tensor, "test_indices": tensor}

The indices point into the full table of ``p * p`` rows ``(a, b, =)`` in row-major order
(row ``a * p + b``), the "=" token being ``p`` and the label ``(a + b) mod p``. The file does
not hold that table; :func:`demo_table` rebuilds it from the config (``p = d_vocab - 1``; the
vocabulary is the ``p`` residues plus "=") so that an import without ``data=`` uses the file's
own split.

``config`` is a pickled ``HookedTransformerConfig`` object in the demo: loading it needs
``trust_pickle=True`` (``--trust-pickle``) and TransformerLens installed. A file whose config
was saved as a dict (``model.cfg.to_dict()``) loads with ``weights_only=True``.

TransformerLens 3.6 and later keep the attention ``mask`` buffer as an empty ``(0, 0)``
tensor and rebuild the causal mask at forward time; files written by 2.x and early 3.x hold an
``(n_ctx, n_ctx)`` mask. TransformerLens's own ``load_state_dict`` keeps the model's buffer
when the shapes differ; :func:`buffer_key_map` does the same for the importer, which otherwise
checks every shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["buffer_key_map", "demo_table", "is_transformer_lens"]

#: buffers TransformerLens rebuilds itself; their stored shape may differ between versions
_REBUILT_BUFFERS = ("mask", "rotary_sin", "rotary_cos")


def is_transformer_lens(model: nn.Module) -> bool:
    """True when ``model`` is a TransformerLens model (``HookedTransformer``, a bridge, ...).
    Decided by the class's module, so TransformerLens need not be importable."""
    return type(model).__module__.split(".")[0] == "transformer_lens"


def _tl_config(config: Any) -> dict[str, Any] | None:
    """The first dict among the file's config entries that looks like a TransformerLens
    ``HookedTransformerConfig`` (``d_vocab``, ``n_ctx``, ``d_model``)."""
    if not isinstance(config, dict):
        return None
    if all(k in config for k in ("d_vocab", "n_ctx", "d_model")):
        return config
    for value in config.values():
        found = _tl_config(value) if isinstance(value, dict) else None
        if found is not None:
            return found
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def demo_table(split: dict[str, Any] | None, source_config: dict[str, Any] | None
               ) -> tuple[tuple[torch.Tensor, torch.Tensor, dict[str, Any]], str] | None:
    """``((x_all, y_all, task), note)`` for a TransformerLens grokking-demo file, else None.

    Parameters
    ----------
    split : dict or None
        The split the file carries (``train_indices``/``test_indices``, canonical names).
    source_config : dict or None
        The file's config entries, JSON-able (``{"config": {...}}``).

    Returns
    -------
    None unless the file holds indices but not the table they index, and its config is a
    TransformerLens config of a 3-token ``(a, b, =)`` model with ``d_vocab = p + 1`` and
    ``d_vocab_out`` ``p`` (or ``p + 1``) whose ``p * p`` rows cover every index. Then
    ``x_all`` int64 ``(p*p, 3)`` rows ``(a, b, p)``, ``y_all`` int64 ``(p*p,)``
    ``(a + b) mod p``, ``task`` ``{"name": "modular", "p": p, "op": "+", "encoding":
    "tokens", ...}``.
    """
    if not split or "train_indices" not in split or "test_indices" not in split:
        return None
    if "x_all" in split and "y_all" in split:
        return None  # the file carries its own table
    cfg = _tl_config(source_config or {})
    if cfg is None:
        return None
    d_vocab, n_ctx = _int(cfg.get("d_vocab")), _int(cfg.get("n_ctx"))
    d_out = _int(cfg.get("d_vocab_out"))
    if d_vocab is None or d_vocab < 3 or n_ctx != 3:
        return None
    p = d_vocab - 1
    if d_out is not None and d_out not in (-1, p, p + 1):
        return None
    idx = torch.cat([torch.as_tensor(split["train_indices"]).reshape(-1),
                     torch.as_tensor(split["test_indices"]).reshape(-1)])
    if idx.numel() == 0 or torch.is_floating_point(idx) or int(idx.min()) < 0 or int(idx.max()) >= p * p:
        return None
    from ..tasks.modular import all_pairs, encode

    pairs, labels = all_pairs(p, "+")
    task = {"name": "modular", "p": p, "op": "+", "encoding": "tokens", "n_classes": p,
            "vocab": p + 1}
    note = (f"TransformerLens grokking demo: indices into the {p}x{p} table of (a, b, =) tokens, "
            f"label (a + b) mod {p}; p = d_vocab - 1 from the file's config")
    return (encode(pairs, p, "tokens"), labels, task), note


def buffer_key_map(model: nn.Module, key_map: Callable | None
                   ) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None:
    """``key_map`` extended, for a TransformerLens model, to keep the model's own attention
    ``mask`` / rotary buffers where the file's have another shape (as TransformerLens's
    ``load_state_dict`` does). Any other model: ``key_map`` unchanged."""
    if not is_transformer_lens(model):
        return key_map
    own = {k: v for k, v in model.state_dict().items()
           if isinstance(v, torch.Tensor) and k.rpartition(".")[2] in _REBUILT_BUFFERS}
    if not own:
        return key_map

    def mapped(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if key_map is not None:
            sd = key_map(sd)
        if not isinstance(sd, dict):
            return sd
        out = dict(sd)
        for k, v in own.items():
            if k in out and isinstance(out[k], torch.Tensor) and out[k].shape != v.shape:
                out[k] = v.detach().clone()
        return out

    return mapped
