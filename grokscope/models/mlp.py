"""The fully connected reference network.

``MLP`` maps ``x`` through ``depth`` hidden ``Linear -> activation`` layers of ``width`` units
and a readout ``Linear``: ``layers[0..depth-1]`` are hidden, ``layers[depth]`` the readout
(``depth=0`` is a linear model). With ``vocab`` set, inputs are integer tokens
``(n, n_tokens)`` embedded by ``embed`` (``nn.Embedding(vocab, embed_dim)``) and concatenated
before the first ``Linear``.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..errors import ConfigError
from .activations import get_activation


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"MLP: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class MLP(nn.Module):
    """A multilayer perceptron.

    Parameters
    ----------
    in_dim : int or None
        Input features (the flattened input). With ``vocab`` set it is
        ``n_tokens * embed_dim`` and may be left ``None``.
    out_dim : int
        Outputs (logits or regression targets).
    width : int
        Units per hidden layer.
    depth : int
        Number of hidden layers (``0``: a linear model).
    activation : str
        See :mod:`grokscope.models.activations`.
    bias : bool
        ``False`` removes every bias.
    init_scale : float
        Multiplies every parameter after PyTorch's default initialisation (Omnigrok's
        ``alpha``; GrokAlign uses 8).
    vocab, n_tokens, embed_dim : int, optional
        Token inputs: an ``nn.Embedding(vocab, embed_dim)`` applied to ``(n, n_tokens)`` long
        inputs. ``embed_dim`` defaults to ``in_dim // n_tokens``.

    Attributes
    ----------
    embed : nn.Embedding or None
    layers : nn.ModuleList of nn.Linear, length ``depth + 1``
    act : nn.Module
    """

    def __init__(
        self,
        in_dim: int | None,
        out_dim: int,
        width: int = 128,
        depth: int = 1,
        activation: str = "relu",
        bias: bool = True,
        init_scale: float = 1.0,
        vocab: int | None = None,
        n_tokens: int | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        out_dim = _positive_int("out_dim", out_dim)
        width = _positive_int("width", width)
        depth = _positive_int("depth", depth, minimum=0)
        if vocab is not None:
            vocab = _positive_int("vocab", vocab)
            if n_tokens is None and embed_dim is not None and in_dim is not None:
                n_tokens = in_dim // embed_dim
            if n_tokens is None:
                raise ConfigError("MLP: token inputs (vocab set) need n_tokens")
            n_tokens = _positive_int("n_tokens", n_tokens)
            if embed_dim is None:
                if in_dim is None or in_dim % n_tokens:
                    raise ConfigError(
                        f"MLP: give embed_dim (in_dim={in_dim} is not a multiple of "
                        f"n_tokens={n_tokens})"
                    )
                embed_dim = in_dim // n_tokens
            embed_dim = _positive_int("embed_dim", embed_dim)
            if in_dim is not None and in_dim != n_tokens * embed_dim:
                raise ConfigError(
                    f"MLP: in_dim={in_dim} but n_tokens*embed_dim={n_tokens * embed_dim}; "
                    "with token inputs leave in_dim=None or make them agree"
                )
            in_dim = n_tokens * embed_dim
            self.embed: nn.Embedding | None = nn.Embedding(vocab, embed_dim)
        else:
            if n_tokens is not None or embed_dim is not None:
                raise ConfigError("MLP: n_tokens/embed_dim need vocab (token inputs)")
            if in_dim is None:
                raise ConfigError("MLP: in_dim is required (or vocab/n_tokens for tokens)")
            self.embed = None
        in_dim = _positive_int("in_dim", in_dim)
        self.in_dim, self.out_dim, self.width, self.depth = in_dim, out_dim, width, depth
        self.vocab, self.n_tokens, self.embed_dim = vocab, n_tokens, embed_dim
        self.activation, self.bias, self.init_scale = activation, bool(bias), float(init_scale)
        sizes = [in_dim] + [width] * depth + [out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.act = get_activation(activation)
        if init_scale != 1.0:
            with torch.no_grad():
                for p in self.parameters():
                    p.mul_(init_scale)

    def _dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype

    def embed_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the first ``Linear``.

        Parameters
        ----------
        x : Tensor, shape ``(n, *input_shape)`` (float) or ``(n, n_tokens)`` (long tokens)

        Returns
        -------
        Tensor, shape ``(n, in_dim)``, in the model's floating dtype
        """
        if self.embed is not None:
            return self.embed(x.long()).flatten(1)
        return x.flatten(1).to(self._dtype())

    def forward_from_input(self, e: torch.Tensor) -> torch.Tensor:
        """The network from the first ``Linear`` on: ``(n, in_dim) -> (n, out_dim)``."""
        h = e
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        return self.layers[-1](h)

    def _check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.depth:
            raise ConfigError(
                f"MLP has {self.depth} hidden layer(s) (0..{self.depth - 1}); got layer={layer}"
            )
        return layer

    def hidden(self, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """Post-activation of hidden layer ``layer``: ``(n, width)``."""
        self._check_layer(layer)
        h = self.embed_inputs(x)
        for lin in self.layers[: layer + 1]:
            h = self.act(lin(h))
        return h

    def from_hidden(self, h: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """The rest of the network from the post-activation ``h`` of hidden layer ``layer``:
        ``(n, width) -> (n, out_dim)``."""
        self._check_layer(layer)
        for lin in self.layers[layer + 1 : -1]:
            h = self.act(lin(h))
        return self.layers[-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, *input_shape)`` or ``(n, n_tokens)`` tokens ``-> (n, out_dim)``."""
        return self.forward_from_input(self.embed_inputs(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, init_scale={self.init_scale}"
