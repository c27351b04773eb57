"""A small decoder-only transformer in the style of Nanda et al. (2023).

One attention + MLP block per layer on a residual stream, causal attention, logits read
from the last position; no LayerNorm by default (``layernorm=True`` adds pre-LN to each
sub-block and before the unembedding). Initialisation follows TransformerLens / Nanda's
grokking code: every weight matrix normal with std ``1/sqrt(d_model)`` (``W_out``:
``1/sqrt(d_mlp)``), biases zero, LayerNorm weight 1; then every parameter is multiplied by
``init_scale``.

Module names (the store and the measures address parameters by them): ``embed`` (``W_E``),
``pos_embed``, ``blocks.{i}.attn.{W_Q,W_K,W_V,W_O}``, ``blocks.{i}.mlp.{W_in,W_out}``,
``unembed`` (``W_U``); with LayerNorm also ``blocks.{i}.ln1``, ``blocks.{i}.ln2``,
``ln_final``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..errors import ConfigError
from .activations import get_activation


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"Transformer: {name} must be an integer >= 1, got {value!r}")
    return int(value)


class Attention(nn.Module):
    """Multi-head causal self-attention without biases.

    ``W_Q``, ``W_K``, ``W_V``: ``Linear(d_model, n_heads*d_head)``; ``W_O``:
    ``Linear(n_heads*d_head, d_model)``.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.W_Q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_K = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_V = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_O = nn.Linear(n_heads * d_head, d_model, bias=False)

    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``(n, n_heads, ctx, ctx)`` for residual ``x`` ``(n, ctx, d)``."""
        n, ctx, _ = x.shape
        q = self.W_Q(x).view(n, ctx, self.n_heads, self.d_head).transpose(1, 2)
        k = self.W_K(x).view(n, ctx, self.n_heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        mask = torch.ones(ctx, ctx, dtype=torch.bool, device=x.device).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, ctx, d_model) -> (n, ctx, d_model)``."""
        n, ctx, _ = x.shape
        v = self.W_V(x).view(n, ctx, self.n_heads, self.d_head).transpose(1, 2)
        z = (self.pattern(x) @ v).transpose(1, 2).reshape(n, ctx, self.n_heads * self.d_head)
        return self.W_O(z)


class MLPBlock(nn.Module):
    """``W_out(act(W_in(x)))`` with biases."""

    def __init__(self, d_model: int, d_mlp: int, activation: str) -> None:
        super().__init__()
        self.W_in = nn.Linear(d_model, d_mlp)
        self.W_out = nn.Linear(d_mlp, d_model)
        self.act = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(self.act(self.W_in(x)))


class Block(nn.Module):
    """``x + attn(ln1(x))`` then ``x + mlp(ln2(x))`` (``ln*`` identity without LayerNorm)."""

    def __init__(
        self, d_model: int, n_heads: int, d_head: int, d_mlp: int, activation: str, layernorm: bool
    ) -> None:
        super().__init__()
        self.attn = Attention(d_model, n_heads, d_head)
        self.mlp = MLPBlock(d_model, d_mlp, activation)
        self.ln1: nn.Module = nn.LayerNorm(d_model) if layernorm else nn.Identity()
        self.ln2: nn.Module = nn.LayerNorm(d_model) if layernorm else nn.Identity()

    def forward(self, x: torch.Tensor, cache: dict | None = None, i: int = 0) -> torch.Tensor:
        a = self.ln1(x)
        if cache is not None:
            cache[f"blocks.{i}.attn.pattern"] = self.attn.pattern(a)
        x = x + self.attn(a)
        m = self.ln2(x)
        if cache is not None:
            post = self.mlp.act(self.mlp.W_in(m))
            cache[f"blocks.{i}.mlp.post"] = post
            return x + self.mlp.W_out(post)
        return x + self.mlp(m)


class Transformer(nn.Module):
    """Token sequence ``(n, ctx)`` to last-position logits ``(n, out_dim)``.

    Parameters
    ----------
    vocab : int
        Input vocabulary (``p + 1`` for modular tasks: residues and "=").
    n_ctx : int
        Maximum context length (3 for ``a b =``).
    out_dim : int, optional
        Output logits (default ``vocab``; ``p`` for modular tasks).
    d_model, n_heads, d_mlp, n_layers : int
    d_head : int, optional
        Per-head size (default ``d_model // n_heads``, which must divide evenly).
    activation : str
        MLP activation (see :mod:`grokscope.models.activations`).
    layernorm : bool
        Pre-LN in each sub-block and before the unembedding.
    init_scale : float
        Multiplies every parameter after initialisation.
    """

    def __init__(
        self,
        vocab: int,
        n_ctx: int = 3,
        out_dim: int | None = None,
        d_model: int = 128,
        n_heads: int = 4,
        d_head: int | None = None,
        d_mlp: int = 512,
        n_layers: int = 1,
        activation: str = "relu",
        layernorm: bool = False,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        vocab = _positive_int("vocab", vocab)
        n_ctx = _positive_int("n_ctx", n_ctx)
        out_dim = _positive_int("out_dim", vocab if out_dim is None else out_dim)
        d_model = _positive_int("d_model", d_model)
        n_heads = _positive_int("n_heads", n_heads)
        d_mlp = _positive_int("d_mlp", d_mlp)
        n_layers = _positive_int("n_layers", n_layers)
        if d_head is None:
            if d_model % n_heads:
                raise ConfigError(
                    f"Transformer: d_model={d_model} is not divisible by n_heads={n_heads}; "
                    "pass d_head explicitly"
                )
            d_head = d_model // n_heads
        d_head = _positive_int("d_head", d_head)
        self.vocab, self.n_ctx, self.out_dim = vocab, n_ctx, out_dim
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.d_mlp, self.n_layers = d_mlp, n_layers
        self.activation, self.layernorm, self.init_scale = (
            activation,
            bool(layernorm),
            float(init_scale),
        )

        self.embed = nn.Embedding(vocab, d_model)
        self.pos_embed = nn.Parameter(torch.empty(n_ctx, d_model))
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_head, d_mlp, activation, layernorm) for _ in range(n_layers)
        )
        self.ln_final: nn.Module = nn.LayerNorm(d_model) if layernorm else nn.Identity()
        self.unembed = nn.Linear(d_model, out_dim, bias=False)
        self._init(init_scale)

    @torch.no_grad()
    def _init(self, init_scale: float) -> None:
        std = 1.0 / math.sqrt(self.d_model)
        for name, p in self.named_parameters():
            if name.endswith("mlp.W_out.weight"):
                nn.init.normal_(p, std=1.0 / math.sqrt(self.d_mlp))
            elif (".ln" in name or name.startswith("ln_final")) and name.endswith("weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=std)
            p.mul_(init_scale)

    # ----------------------------------------------------------------- decomposition
    def embed_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (after ``W_E``, before the positional embedding), flattened.

        Parameters
        ----------
        tokens : LongTensor, shape ``(n, ctx)``, ``ctx <= n_ctx``

        Returns
        -------
        Tensor, shape ``(n, ctx * d_model)``
        """
        if tokens.ndim != 2 or tokens.shape[1] > self.n_ctx:
            raise ConfigError(
                f"Transformer takes tokens of shape (n, ctx) with ctx <= {self.n_ctx}, got "
                f"{tuple(tokens.shape)}"
            )
        return self.embed(tokens.long()).flatten(1)

    def _residual(self, e: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = e.view(e.shape[0], -1, self.d_model)
        ctx = x.shape[1]
        if ctx > self.n_ctx:
            raise ConfigError(f"Transformer: context {ctx} exceeds n_ctx={self.n_ctx}")
        x = x + self.pos_embed[:ctx]
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.ln_final(x)

    def forward_from_input(self, e: torch.Tensor) -> torch.Tensor:
        """The rest of the network: ``(n, ctx * d_model)`` embeddings ``-> (n, out_dim)``."""
        return self.unembed(self._residual(e)[:, -1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(n, ctx)`` tokens ``-> (n, out_dim)`` last-position logits."""
        return self.forward_from_input(self.embed_inputs(tokens))

    # ----------------------------------------------------------------- inspection
    def run_with_cache(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and intermediate activations.

        Returns
        -------
        logits : Tensor ``(n, out_dim)``
        cache : dict
            ``"blocks.{i}.attn.pattern"`` ``(n, n_heads, ctx, ctx)``,
            ``"blocks.{i}.mlp.post"`` ``(n, ctx, d_mlp)`` (MLP neuron activations),
            ``"resid_final"`` ``(n, ctx, d_model)`` (after ``ln_final``).
        """
        cache: dict[str, torch.Tensor] = {}
        resid = self._residual(self.embed_inputs(tokens), cache)
        cache["resid_final"] = resid
        return self.unembed(resid[:, -1]), cache

    def mlp_post(self, tokens: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """MLP neuron activations of block ``layer``: ``(n, ctx, d_mlp)``."""
        if not 0 <= layer < self.n_layers:
            raise ConfigError(f"Transformer has {self.n_layers} block(s); got layer={layer}")
        return self.run_with_cache(tokens)[1][f"blocks.{layer}.mlp.post"]

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, layernorm={self.layernorm}, init_scale={self.init_scale}"
