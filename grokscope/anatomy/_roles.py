"""The roles of a model, as plain JSON-able data (stored in a run's config).

An :class:`Anatomy` names *where* in a model each role lives, by dotted module paths
(``model.get_submodule``) and parameter keys (``model.named_parameters``): never by object
identity, so a description detected on the original model applies to the same architecture
rebuilt elsewhere (a caller's class, a registered name, an exported program).

Roles
-----
``input``
    ``{"module": path}``: Jacobians are taken w.r.t. the output of that module (a token
    embedding), flattened per sample; ``{"module": None}``: w.r.t. the raw float input.
``output``
    ``{"position": -1 | None, "classes": [start, stop] | None}``: the logits are the model's
    output (its ``.logits`` or first element when it returns an object or a tuple), at one
    sequence position when the output has a position axis, restricted to a class slice.
``hidden``
    Neuron layers in call order, each ``{"name", "in", "out", "activation", "capture"}``:
    ``in``/``out`` name the linear maps into and out of the neurons, ``activation`` the
    elementwise nonlinearity (verified numerically at detection), ``capture`` where the
    post-activation can be read (``{"module": path, "at": "input" | "output"}``) or None
    (then it is computed as ``activation(W_in h + b_in)`` from the input of ``in``).
``linear``
    Linear maps ``z = W h (+ b)``, each ``{"name", "weight", "bias", "module", "orientation",
    "output"}``: ``weight``/``bias`` are parameter keys; ``module`` is the module whose *input*
    ``h`` the weight multiplies (None when ``h`` is internal to a module, e.g. ``W_out``);
    ``orientation`` is ``"out_in"`` (``nn.Linear``: weight ``(out, in)``) or ``"in_out"``
    (TransformerLens: ``(in, out)``); ``output`` a module whose output is ``z`` (an
    ``nn.Linear`` itself, a ``hook_pre``), or None.
``embedding`` / ``unembedding``
    ``{"param": key, "orientation": "rows" | "columns"}``: the token table (vocab, d) and the
    readout table (classes, d) are the parameter's rows, or its columns (Nanda's ``W_E``
    ``(d_model, vocab)``; every ``W_U``).
``readout``
    The name of the linear map whose output is the logits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, MeasureNotApplicable

ROLES = ("input", "output", "hidden", "linear", "embedding", "unembedding", "readout")
ORIENTATIONS = ("out_in", "in_out")
TABLE_ORIENTATIONS = ("rows", "columns")

#: what each role is for, and the ``anatomy=`` key that supplies it (used in error messages)
ROLE_HELP = {
    "input": "anatomy={'input': 'embed'} (a module whose output is the input to differentiate) "
    "or {'input': None} (the raw float input)",
    "output": "anatomy={'output': 'last'} (last position), 'all', or "
    "{'position': -1, 'classes': [0, p]}",
    "hidden": "anatomy={'hidden': ['blocks.0.mlp.hook_post']} (modules whose output are the "
    "neuron activations) or [{'in': 'fc1', 'out': 'fc2', 'activation': 'relu'}]",
    "linear": "anatomy={'linear': ['fc1', 'blocks.0.mlp.W_in']} (nn.Linear modules or raw "
    "weight parameters)",
    "embedding": "anatomy={'embedding': 'embed.W_E'} (the token table's parameter key)",
    "unembedding": "anatomy={'unembedding': 'unembed.W_U'} (the readout table's parameter key)",
    "readout": "anatomy={'readout': 'unembed.W_U'} (the linear map whose output is the logits)",
}


def missing_role(role: str, measure: str, detail: str = "") -> MeasureNotApplicable:
    """The error a measure raises (or the reason it returns) when a role is absent."""
    extra = f" ({detail})" if detail else ""
    return MeasureNotApplicable(
        f"{measure} needs the model's {role!r} role, which was not found{extra}; "
        f"supply it with {ROLE_HELP[role]}"
    )


@dataclass
class Anatomy:
    """Where each role lives in a model (see the module docstring)."""

    input: dict[str, Any] = field(default_factory=lambda: {"module": None})
    output: dict[str, Any] = field(default_factory=lambda: {"position": None, "classes": None})
    hidden: list[dict[str, Any]] = field(default_factory=list)
    linear: list[dict[str, Any]] = field(default_factory=list)
    embedding: dict[str, Any] | None = None
    unembedding: dict[str, Any] | None = None
    readout: str | None = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ lookups
    def linear_map(self, name: str) -> dict[str, Any]:
        """The linear map called ``name`` (its module path or weight key)."""
        for lin in self.linear:
            if name in (lin["name"], lin["weight"]):
                return lin
        raise ConfigError(
            f"the model has no linear map {name!r}; its linear maps are "
            f"{[lin['name'] for lin in self.linear]} (anatomy 'linear')"
        )

    def has(self, role: str) -> bool:
        """True when ``role`` is present (``input``/``output`` always are)."""
        value = getattr(self, role)
        return value is not None and value != []

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (what a run's ``config["anatomy"]`` holds)."""
        return copy.deepcopy({r: getattr(self, r) for r in (*ROLES, "notes")})

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Anatomy:
        """Rebuild from :meth:`to_dict` output, checking its form."""
        if not isinstance(doc, dict):
            raise ConfigError(f"an anatomy must be a dict of roles, got {type(doc).__name__}")
        unknown = sorted(set(doc) - set(ROLES) - {"notes"})
        if unknown:
            raise ConfigError(f"unknown anatomy role(s) {unknown}; the roles are {list(ROLES)}")
        a = cls(**copy.deepcopy({k: v for k, v in doc.items() if k in (*ROLES, "notes")}))
        a.validate_form()
        return a

    def validate_form(self) -> None:
        """Check the shape of every role's description (not the model: see ``check``)."""
        _need(isinstance(self.input, dict) and "module" in self.input
              and _opt_str(self.input["module"]), "input", self.input)
        _need(isinstance(self.output, dict), "output", self.output)
        pos, cls_ = self.output.get("position"), self.output.get("classes")
        _need(pos is None or isinstance(pos, int), "output", self.output)
        _need(cls_ is None or (isinstance(cls_, list | tuple) and len(cls_) == 2), "output", self.output)
        _need(isinstance(self.hidden, list), "hidden", self.hidden)
        for h in self.hidden:
            _need(isinstance(h, dict) and isinstance(h.get("name"), str), "hidden", h)
            _need(all(_opt_str(h.get(k)) for k in ("in", "out", "activation")), "hidden", h)
            cap = h.get("capture")
            _need(cap is None or (isinstance(cap, dict) and cap.get("at") in ("input", "output")
                                  and isinstance(cap.get("module"), str)), "hidden", h)
            _need(cap is not None or (h.get("in") and h.get("activation")), "hidden", h)
        _need(isinstance(self.linear, list), "linear", self.linear)
        for lin in self.linear:
            _need(isinstance(lin, dict) and {"name", "weight", "orientation"} <= set(lin), "linear", lin)
            _need(lin["orientation"] in ORIENTATIONS, "linear", lin)
            _need(isinstance(lin["name"], str) and isinstance(lin["weight"], str)
                  and all(_opt_str(lin.get(k)) for k in ("bias", "module", "output")), "linear", lin)
        for role in ("embedding", "unembedding"):
            t = getattr(self, role)
            _need(t is None or (isinstance(t, dict) and t.get("orientation") in TABLE_ORIENTATIONS
                                and isinstance(t.get("param"), str)), role, t)
        _need(self.readout is None or isinstance(self.readout, str), "readout", self.readout)
        if not (isinstance(self.notes, list) and all(isinstance(n, str) for n in self.notes)):
            raise ConfigError(f"anatomy notes must be a list of strings, got {self.notes!r}")

    def summary(self) -> str:
        """Several lines, one per role (what ``grokscope info`` prints)."""
        inp = self.input.get("module")
        pos = self.output.get("position")
        cls_ = self.output.get("classes")
        lines = [
            f"input:       {'raw float input' if inp is None else f'output of {inp!r}'}",
            "output:      logits" + ("" if pos is None else f" at position {pos}")
            + ("" if cls_ is None else f", classes {cls_[0]}..{cls_[1] - 1}"),
        ]
        hid = [
            f"{h['name']} ({h.get('activation') or '?'}; "
            + (f"{h['capture']['at']} of {h['capture']['module']!r}" if h.get("capture")
               else f"computed from {h['in']!r}") + ")"
            for h in self.hidden
        ]
        lines.append("hidden:      " + ("; ".join(hid) if hid else "none found"))
        lins = [f"{lin['name']} [{lin['orientation']}]" for lin in self.linear]
        lines.append("linear:      " + (", ".join(lins) if lins else "none found"))
        for role in ("embedding", "unembedding"):
            t = getattr(self, role)
            lines.append(f"{role + ':':<13}" + ("none found" if t is None else
                                               f"{t['param']} ({t['orientation']} are the entries)"))
        lines.append(f"readout:     {self.readout or 'none found'}")
        lines += [f"note:        {n}" for n in self.notes]
        return "\n".join(lines)


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _need(ok: bool, role: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"anatomy role {role!r} is malformed: {value!r}; expected e.g. {ROLE_HELP[role]}")
