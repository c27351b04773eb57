"""Independent oracles for the Jacobian measures on the zoo's raw transformers.

Everything here reads the raw transformer's parameters directly and recomputes its function
with plain matmuls and a ``-inf`` causal mask (the zoo writes it with einsum and
``tril - 1e10``): nothing goes through grokscope's anatomy or the model's own forward.
"""

from __future__ import annotations

import math

import torch

import grokscope as gs


def raw_params(m) -> dict[str, torch.Tensor]:
    """The raw transformer's weights in one layout: ``W_E (vocab, d)``, ``W_in (d_mlp, d)``,
    ``W_out (d, d_mlp)``, ``W_Q/W_K/W_V (heads, d_head, d)``, ``W_O (d, heads*d_head)``,
    ``W_U (d, C)``, ``W_pos (ctx, d)``, biases."""
    tl = m.embed.tl
    mlp, attn = m.blocks[0].mlp, m.blocks[0].attn
    return {
        "W_E": m.embed.W_E if tl else m.embed.W_E.T,
        "W_pos": m.pos_embed.W_pos,
        "W_Q": attn.W_Q, "W_K": attn.W_K, "W_V": attn.W_V, "W_O": attn.W_O,
        "W_in": mlp.W_in.T if tl else mlp.W_in,
        "b_in": mlp.b_in,
        "W_out": mlp.W_out.T if tl else mlp.W_out,
        "b_out": mlp.b_out,
        "W_U": m.unembed.W_U,
    }


def embed(m, tokens: torch.Tensor) -> torch.Tensor:
    """Token embeddings ``(n, T, d)``: columns of Nanda's ``W_E`` (rows in TL layout)."""
    return raw_params(m)["W_E"][tokens]


def mlp(m, h: torch.Tensor) -> torch.Tensor:
    """The MLP block on its input ``h`` ``(..., d)``."""
    p = raw_params(m)
    return torch.relu(h @ p["W_in"].T + p["b_in"]) @ p["W_out"].T + p["b_out"]


def logits_from_embedding(m, e: torch.Tensor) -> torch.Tensor:
    """Last-position logits ``(n, C)`` from token embeddings ``e`` ``(n, T, d)``."""
    p = raw_params(m)
    n, t, d = e.shape
    heads, d_head, _ = p["W_Q"].shape
    x = e + p["W_pos"][:t]
    q = torch.einsum("hjd,ntd->nhtj", p["W_Q"], x)
    k = torch.einsum("hjd,ntd->nhtj", p["W_K"], x)
    v = torch.einsum("hjd,ntd->nhtj", p["W_V"], x)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    att = scores.masked_fill(future, float("-inf")).softmax(-1)
    z = (att @ v).transpose(1, 2).reshape(n, t, heads * d_head)
    x = x + z @ p["W_O"].T
    x = x + mlp(m, x)
    return x[:, -1] @ p["W_U"]


def to_grokscope(raw) -> torch.nn.Module:
    """grokscope's Transformer holding the raw transformer's weights (same function)."""
    p = {k: v.detach() for k, v in raw_params(raw).items()}
    vocab, d = p["W_E"].shape
    heads, d_head, _ = p["W_Q"].shape
    g = gs.build_model("transformer", vocab=vocab, n_ctx=p["W_pos"].shape[0],
                       out_dim=p["W_U"].shape[1], d_model=d, n_heads=heads, d_head=d_head,
                       d_mlp=p["W_in"].shape[0]).to(p["W_E"].dtype)
    attn, block_mlp = g.blocks[0].attn, g.blocks[0].mlp
    with torch.no_grad():
        g.embed.weight.copy_(p["W_E"])  # (vocab, d)
        g.pos_embed.copy_(p["W_pos"])
        for name in ("W_Q", "W_K", "W_V"):  # (heads, d_head, d) -> (heads*d_head, d)
            getattr(attn, name).weight.copy_(p[name].reshape(heads * d_head, d))
        attn.W_O.weight.copy_(p["W_O"])  # (d, heads*d_head), head-major like the raw z_flat
        block_mlp.W_in.weight.copy_(p["W_in"])
        block_mlp.W_in.bias.copy_(p["b_in"])
        block_mlp.W_out.weight.copy_(p["W_out"])
        block_mlp.W_out.bias.copy_(p["b_out"])
        g.unembed.weight.copy_(p["W_U"].T)
    return g.eval()
