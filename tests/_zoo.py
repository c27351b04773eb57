"""Models written the way researchers write them, for the any-model tests.

Five kinds, none using grokscope's attribute names:

- ``seq_mlp``: an ``nn.Sequential`` MLP on two-hot ``(n, 2p)`` inputs;
- ``NamedMLP``: a custom class with its own names and a functional activation;
- ``EmbedMLP``: ``nn.Embedding`` + MLP on ``(a, b)`` tokens;
- grokscope's own ``Transformer`` (``grokscope_transformer``);
- ``RawTransformer``: a one-layer transformer in the Nanda et al. style: small modules with
  their own forwards, raw ``W_E``, ``W_pos``, ``W_Q/W_K/W_V``, ``W_O``, ``W_in``, ``W_out``,
  ``W_U`` parameters used through einsum, output ``(batch, ctx, vocab_out)``. With
  ``tl_layout=True`` the 2-D weights take TransformerLens's orientation (``W_E`` (vocab,
  d_model), ``W_in`` (d_model, d_mlp), ``W_out`` (d_mlp, d_model)).
- ``RootRawMLP``: one module, no submodules: raw ``W_in``, ``b_in``, ``W_out`` at the model's
  root, used through einsum on two-hot inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import grokscope as gs
from grokscope.tasks import make_task


def seq_mlp(p: int, width: int = 48) -> nn.Module:
    return nn.Sequential(nn.Linear(2 * p, width), nn.ReLU(), nn.Linear(width, p))


class NamedMLP(nn.Module):
    """Two hidden layers, custom names, ``F.silu`` (no activation module)."""

    def __init__(self, d_in: int, width: int, n_out: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_in, width)
        self.fc_mid = nn.Linear(width, width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.fc_mid(F.silu(self.fc_in(x)))))


class RootRawMLP(nn.Module):
    """A one-hidden-layer ReLU MLP as one module of raw parameters (nothing nested)."""

    def __init__(self, d_in: int, width: int, n_out: int) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(width, d_in) / math.sqrt(d_in))
        self.b_in = nn.Parameter(torch.zeros(width))
        self.W_out = nn.Parameter(torch.randn(n_out, width) / math.sqrt(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.einsum("wd,nd->nw", self.W_in, x) + self.b_in)
        return torch.einsum("cw,nw->nc", self.W_out, h)


class EmbedMLP(nn.Module):
    """Token embedding, concatenated, one GELU hidden layer."""

    def __init__(self, vocab: int, d: int, width: int, n_out: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.hidden_layer = nn.Linear(2 * d, width)
        self.act = nn.GELU()
        self.out = nn.Linear(width, n_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.tok(tokens[:, :2]).flatten(1)
        return self.out(self.act(self.hidden_layer(e)))


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int, tl_layout: bool) -> None:
        super().__init__()
        self.tl = tl_layout
        shape = (d_vocab, d_model) if tl_layout else (d_model, d_vocab)
        self.W_E = nn.Parameter(torch.randn(*shape) / math.sqrt(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tl:
            return self.W_E[x]
        return torch.einsum("dbp -> bpd", self.W_E[:, x])


class Unembed(nn.Module):
    def __init__(self, d_vocab_out: int, d_model: int) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.randn(d_model, d_vocab_out) / math.sqrt(d_vocab_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U


class PosEmbed(nn.Module):
    def __init__(self, max_ctx: int, d_model: int) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(max_ctx, d_model) / math.sqrt(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.W_pos[: x.shape[-2]]


class Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_head: int, n_ctx: int) -> None:
        super().__init__()
        self.W_K = nn.Parameter(torch.randn(num_heads, d_head, d_model) / math.sqrt(d_model))
        self.W_Q = nn.Parameter(torch.randn(num_heads, d_head, d_model) / math.sqrt(d_model))
        self.W_V = nn.Parameter(torch.randn(num_heads, d_head, d_model) / math.sqrt(d_model))
        self.W_O = nn.Parameter(torch.randn(d_model, d_head * num_heads) / math.sqrt(d_model))
        self.register_buffer("mask", torch.tril(torch.ones((n_ctx, n_ctx))))
        self.d_head = d_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.einsum("ihd,bpd->biph", self.W_K, x)
        q = torch.einsum("ihd,bpd->biph", self.W_Q, x)
        v = torch.einsum("ihd,bpd->biph", self.W_V, x)
        scores = torch.einsum("biph,biqh->biqp", k, q)
        ctx = x.shape[-2]
        masked = torch.tril(scores) - 1e10 * (1 - self.mask[:ctx, :ctx])
        attn = F.softmax(masked / math.sqrt(self.d_head), dim=-1)
        z = torch.einsum("biph,biqp->biqh", v, attn)
        z_flat = z.permute(0, 2, 1, 3).reshape(x.shape[0], ctx, -1)
        return torch.einsum("df,bqf->bqd", self.W_O, z_flat)


class MLPBlock(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, tl_layout: bool) -> None:
        super().__init__()
        self.tl = tl_layout
        w_in = (d_model, d_mlp) if tl_layout else (d_mlp, d_model)
        w_out = (d_mlp, d_model) if tl_layout else (d_model, d_mlp)
        self.W_in = nn.Parameter(torch.randn(*w_in) / math.sqrt(d_model))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(*w_out) / math.sqrt(d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tl:
            return F.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out
        pre = torch.einsum("md,bpd->bpm", self.W_in, x) + self.b_in
        return torch.einsum("dm,bpm->bpd", self.W_out, F.relu(pre)) + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, d_head: int, num_heads: int, n_ctx: int,
                 tl_layout: bool) -> None:
        super().__init__()
        self.attn = Attention(d_model, num_heads, d_head, n_ctx)
        self.mlp = MLPBlock(d_model, d_mlp, tl_layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class RawTransformer(nn.Module):
    """Nanda et al.'s one-layer grokking transformer, written as in their notebook."""

    def __init__(self, p: int, d_model: int = 32, d_mlp: int = 64, num_heads: int = 4,
                 n_ctx: int = 3, tl_layout: bool = False) -> None:
        super().__init__()
        self.embed = Embed(p + 1, d_model, tl_layout)
        self.pos_embed = PosEmbed(n_ctx, d_model)
        self.blocks = nn.ModuleList(
            [TransformerBlock(d_model, d_mlp, d_model // num_heads, num_heads, n_ctx, tl_layout)]
        )
        self.unembed = Unembed(p, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_embed(self.embed(x))
        for block in self.blocks:
            x = block(x)
        return self.unembed(x)


def grokscope_transformer(p: int) -> nn.Module:
    return gs.build_model("transformer", vocab=p + 1, n_ctx=3, out_dim=p, d_model=32,
                          n_heads=4, d_mlp=64)


def data_for(kind: str, p: int = 11, frac: float = 0.5, seed: int = 0) -> gs.Data:
    """The modular-addition split each zoo model takes."""
    enc = "onehot" if kind in ("seq_mlp", "named_mlp", "root_raw_mlp") else "tokens"
    return make_task("modular", p=p, op="+", train_frac=frac, encoding=enc, seed=seed)


def build(kind: str, p: int = 11, seed: int = 0) -> nn.Module:
    """A zoo model of ``kind`` for ``p``."""
    torch.manual_seed(seed)
    if kind == "seq_mlp":
        return seq_mlp(p)
    if kind == "named_mlp":
        return NamedMLP(2 * p, 40, p)
    if kind == "root_raw_mlp":
        return RootRawMLP(2 * p, 40, p)
    if kind == "embed_mlp":
        return EmbedMLP(p + 1, 12, 48, p)
    if kind == "grokscope_transformer":
        return grokscope_transformer(p)
    if kind == "raw_transformer":
        return RawTransformer(p)
    if kind == "tl_layout_transformer":
        return RawTransformer(p, tl_layout=True)
    raise KeyError(kind)


KINDS = ("seq_mlp", "named_mlp", "root_raw_mlp", "embed_mlp", "grokscope_transformer", "raw_transformer",
         "tl_layout_transformer")


def last_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The user's own reading of the logits: last position for sequence outputs."""
    out = model(x)
    return out[:, -1] if out.ndim == 3 else out


def record(path, kind: str, *, steps=(0, 3, 8), p: int = 11, lr: float = 3e-3, seed: int = 0):
    """Train zoo model ``kind`` with a plain loop and record it at ``steps`` with
    ``gs.Recorder`` (no model spec, no kwargs: the store must carry the architecture).

    Returns ``(model, data)`` at the last step.
    """
    model, data = build(kind, p=p, seed=seed), data_for(kind, p=p)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1.0)
    with gs.Recorder(path, model, data) as rec:
        for step in range(max(steps) + 1):
            if step in steps:
                rec.record(step, model)
            loss = F.cross_entropy(last_logits(model, data.x_train)[:, :p], data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, data
