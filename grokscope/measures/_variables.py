"""What every output variable of every measure means: its ``long_name``, ``units`` and a
one-line description, in one place.

:func:`annotate_variables` writes them into a result's variable attrs (``long_name``,
``units``, ``description``), never overwriting an attr the measure set itself. The registry
applies it to whatever a registered measure returns (:func:`grokscope.measures.registry.register`
wraps the function), so results computed through the engine carry them; variables the engine
adds itself (``nonfinite_weights``) are listed in :data:`ENGINE_VARIABLES`.

Units: ``"1"`` for dimensionless quantities (fractions, correlations, counts, flags, labels,
weight norms: parameters carry no unit), ``"nats"`` for cross-entropies, ``"bits"`` for
base-2 entropies, ``"steps"`` for training steps, ``"logit"`` for differences of logits and
quantities built from them (a Jacobian's norm, the centroid). A unit that depends on a
parameter or on what the measure found (the ``curves`` loss: cross-entropy or MSE) is a
function of the result and its parameters.

``docs/methods.md`` shows these tables (between ``<!-- variables: NAME -->`` markers);
``python -m grokscope.measures._variables docs/methods.md`` rewrites them from here, and
``tests/test_measure_contract.py`` checks that the page is up to date and that every variable
every measure outputs is listed here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

__all__ = [
    "ENGINE_VARIABLES",
    "VARIABLES",
    "Variable",
    "annotate_variables",
    "describe",
    "markdown_table",
    "update_markdown",
]

Units = str | Callable[[xr.Dataset, Mapping[str, Any]], str]


@dataclass(frozen=True)
class Variable:
    """One output variable: ``long_name``, ``units`` (a string, or a function of the result
    and its parameters returning one), a one-line ``description``, ``doc_units`` (the
    units as the documentation states them, for units that are functions), and ``curve``:
    False for an identifier (a slot index) whose per-step values are names, not amounts, so
    that their change over steps is no rate (the ``phases`` change points leave it out)."""

    long_name: str
    units: Units
    description: str
    doc_units: str = ""
    curve: bool = True

    def units_for(self, ds: xr.Dataset | None = None, params: Mapping[str, Any] | None = None) -> str:
        """The units string (for a function: evaluated on ``ds`` and ``params``)."""
        if callable(self.units):
            return self.units(ds if ds is not None else xr.Dataset(), params or {})
        return self.units

    @property
    def units_text(self) -> str:
        """The units as documented."""
        return self.doc_units or (self.units if isinstance(self.units, str) else "")


V = Variable


def _loss_units(ds: xr.Dataset, _params: Mapping[str, Any]) -> str:
    return "1" if ds.attrs.get("loss") == "mse" else "nats"


def _rate_units(_ds: xr.Dataset, params: Mapping[str, Any]) -> str:
    return {"log": "1/log(1+step)", "linear": "1/steps", "jump": "1"}.get(
        str(params.get("changepoint_scale", "log")), "1"
    )


#: variables the engine adds to every step measure's result
ENGINE_VARIABLES: dict[str, Variable] = {
    "nonfinite_weights": V(
        "non-finite weights", "1",
        "True where the checkpoint had a NaN/inf parameter; that step's values are NaN",
    ),
}

#: every variable (data variable or non-index coordinate) of every measure, by measure
VARIABLES: dict[str, dict[str, Variable]] = {
    "curves": {
        "train_loss": V("train loss", _loss_units,
                        "mean cross-entropy on the training split (mean squared error when "
                        "the task's loss is MSE)", doc_units="nats (CE) / 1 (MSE)"),
        "test_loss": V("test loss", _loss_units,
                       "mean cross-entropy on the test split (mean squared error when the "
                       "task's loss is MSE)", doc_units="nats (CE) / 1 (MSE)"),
        "train_acc": V("train accuracy", "1",
                       "arg-max accuracy on the training split (NaN for regression)"),
        "test_acc": V("test accuracy", "1",
                      "arg-max accuracy on the test split (NaN for regression)"),
        "param_norm": V("parameter L2 norm", "1",
                        "sqrt of the sum of squares of every floating-point parameter"),
        "param_norm_tensor": V("per-tensor parameter norm", "1",
                               "Frobenius norm of each parameter tensor (dim tensor)"),
        "linf_norm": V("parameter l-infinity norm", "1",
                       "largest absolute parameter entry"),
        "rel_distance_init": V("relative distance from the first step", "1",
                               "||theta_t - theta_0|| / ||theta_0||, theta_0 the first stored "
                               "step (NaN when theta_0 = 0)"),
    },
    "phases": {
        "t_train": V("train accuracy reaches threshold", "steps",
                     "first stored step with train accuracy >= threshold (NaN: never)"),
        "t_test": V("test accuracy reaches threshold", "steps",
                    "first stored step with test accuracy >= threshold (NaN: never)"),
        "gap": V("grokking gap", "steps", "t_test - t_train (NaN unless both are reached)"),
        "label": V("phase label", "1",
                   "comprehension, grokking, memorisation, confusion, semi-grokking, "
                   "ungrokking, or unavailable (no accuracy stored)"),
        "final_train_acc": V("final train accuracy", "1",
                             "last finite train accuracy of the steps used"),
        "final_test_acc": V("final test accuracy", "1",
                            "last finite test accuracy of the steps used"),
        "max_test_acc": V("maximum test accuracy", "1", "largest finite test accuracy"),
        "test_acc_at_t_train": V("test accuracy at t_train", "1",
                                 "first finite test accuracy at or after t_train (the "
                                 "baseline of the semi-grokking rise)"),
        "changepoint": V("change point", "steps",
                         "midpoint of the interval where each stored curve (dim curve) moves "
                         "fastest, per unit of log(1 + step) by default (NaN: flat curve)"),
        "changepoint_rate": V("change-point rate", _rate_units,
                              "that interval's change as a fraction of the curve's range, per "
                              "unit of x (x = log(1+step), step, or per interval)",
                              doc_units="1/log(1+step) (default), 1/steps or 1"),
    },
    "mixture": {
        "k": V("number of mixture components", "1",
               "k in 1..max_components minimising BIC"),
        "weights": V("component weights", "1",
                     "mixing weight of each component slot (NaN in unused slots)"),
        "means": V("component means", "1",
                   "mean of each component slot, in the order parameter's units (dim feature "
                   "too for the pca order parameter)"),
        "variances": V("component variances", "1",
                       "diagonal variance of each component slot, order parameter units squared"),
        "null_distance": V("component distance from the null", "1",
                           "distance of each component's mean from the null mean, in null "
                           "standard deviations"),
        "bic": V("BIC per candidate k", "1",
                 "Bayesian information criterion of the kept fit for k = 1..max_components "
                 "(dim candidate; lower is better)"),
        "cold_bic": V("cold-fit BIC per candidate k", "1",
                      "BIC of the fit from n_init k-means++ initialisations alone (bic is "
                      "never above it)"),
        "bic_gap": V("BIC gap to one component", "1",
                     "BIC(1) - BIC(k): the evidence for a mixture over one Gaussian"),
        "bic_margin": V("BIC margin over the runner-up", "1",
                        "BIC of the second-best k minus BIC of the chosen k (small: k weakly "
                        "determined; NaN with one candidate)"),
        "droplet_fraction": V("droplet fraction", "1",
                              "1 - weight of the null component; 1 when no component is null"),
        "neurons_outside_null": V("share of neurons outside the null", "1",
                                  "share of neurons whose own phi is more than null_sds null "
                                  "standard deviations from the null mean (no fit involved)"),
        "null_component": V("null component slot", "1",
                            "slot of the null component (-1: none is within null_sds)",
                            curve=False),
        "null_mean": V("null mean", "1",
                       "mean of the order parameter at random initialisation"),
        "null_std": V("null standard deviation", "1",
                      "standard deviation of the order parameter at random initialisation"),
        "converged": V("fit converged", "1", "the chosen fit's EM converged"),
        "warm_started": V("warm fit tried", "1",
                          "a fit initialised from the previous step's fits was tried"),
        "warm_fit_kept": V("warm fit kept", "1",
                           "the chosen fit is the warm-started one (its BIC was lower)"),
        "n_neurons": V("number of neurons", "1", "rows of the layer (samples of phi)"),
        "hist_counts": V("histogram counts", "1",
                         "neurons per histogram bin of phi (first feature for pca)"),
        "hist_edges": V("histogram bin edges", "1",
                        "bins + 1 edges, in the order parameter's units"),
    },
    "alignment": {
        "centroid_alignment_mean": V("mean centroid alignment", "1",
                                     "mean over evaluation points of <mu_x, x> / max(|mu_x| "
                                     "|x|, 1e-8), mu_x the gradient of the summed logits"),
        "centroid_alignment_min": V("minimum centroid alignment", "1",
                                    "smallest per-point centroid alignment"),
        "centroid_alignment_max": V("maximum centroid alignment", "1",
                                    "largest per-point centroid alignment"),
        "centroid_inner_mean": V("mean <mu_x, x>", "logit",
                                 "mean inner product of the centroid with the input"),
        "centroid_norm_mean": V("mean centroid norm", "logit", "mean |mu_x|"),
        "jacobian_norm": V("mean Jacobian norm", "logit",
                           "mean Frobenius norm of the input-output Jacobian J_x over the first "
                           "n_jacobian_points"),
        "jacobian_alignment_mean": V("mean Jacobian alignment", "1",
                                     "[ours] mean |J_x x|^2 / (||J_x||_F^2 |x|^2): 1 when every "
                                     "row of J_x is parallel to x"),
        "rank_one_mean": V("mean rank-one-ness of the Jacobian", "1",
                           "[ours] mean sigma_1^2 / sum sigma_i^2 of J_x"),
        "pc1": V("GrokAlign PC1", "1",
                 "the authors' PC1: rank-one-ness averaged over the first n_pc1_points"),
        "n_points": V("evaluation points", "1", "points of the split used (centroid quantities)"),
        "n_jacobian_points": V("Jacobian points", "1",
                               "points the full-Jacobian quantities averaged over"),
        "n_pc1_points": V("PC1 points", "1", "points PC1 averaged over"),
    },
    "lmn": {
        "lmn": V("linear mapping number", "1",
                 "2^S, S the entropy of the normalised |eigenvalues| of the linearity matrix "
                 "(1: g linear between every pair of samples)"),
        "lmn_entropy": V("linearity-matrix entropy", "bits", "S = -sum p_i log2 p_i; LMN = 2^S"),
        "n_samples": V("samples", "1", "N, the samples used (LMN is comparable at equal N)"),
        "sample_index": V("sample row index", "1",
                          "row of the split each sample was drawn from (dim sample)"),
    },
    "nfa": {
        "nfa_corr_sqrt": V("NFA correlation, s = 1/2", "1",
                           "Pearson(W^T W, AGOP^(1/2)) per linear map (dim layer): the headline"),
        "nfa_corr": V("NFA correlation, s = 1", "1", "Pearson(W^T W, AGOP)"),
        "nfa_corr_centred": V("NFA correlation, gradient-centred AGOP", "1",
                              "Pearson(W^T W, G_c^(1/2)), G_c from Jacobians minus their mean "
                              "(NaN where G_c vanishes)"),
        "cnfa": V("C-NFA correlation", "1",
                  "Pearson((W-W0)^T K (W-W0), (W-W0)^T (W-W0)), W0 the first step (NaN at W = W0)"),
        "agop_alignment": V("AGOP alignment with the final step", "1",
                            "cosine(AGOP_t, AGOP_final)"),
        "nfa_cos_sqrt": V("NFA cosine, s = 1/2", "1",
                          "uncentred cosine(W^T W, AGOP^(1/2)) (the NFA authors' correlate)"),
        "nfa_cos": V("NFA cosine, s = 1", "1", "uncentred cosine(W^T W, AGOP)"),
        "nfa_init_removed_sqrt": V("init-removed NFA correlation, s = 1/2", "1",
                                   "Pearson((W-W0)^T (W-W0), AGOP^(1/2)) (NaN at W = W0)"),
        "nfa_init_removed": V("init-removed NFA correlation, s = 1", "1",
                              "Pearson((W-W0)^T (W-W0), AGOP) (NaN at W = W0)"),
        "nfa_cos_init_removed": V("init-removed NFA cosine", "1",
                                  "cosine((W-W0)^T (W-W0), AGOP), verify_deep_NFA.py's default"),
        "in_dim": V("input size of the map", "1", "columns of W read as (out, in)"),
        "n_points": V("AGOP points", "1", "inputs the AGOP averages over"),
        "nfm": V("neural feature matrix", "1",
                 "W^T W, dims (layer, in_i, in_j); only with store_matrices=True"),
        "agop": V("AGOP", "logit^2",
                  "average gradient outer product W^T K W, dims (layer, in_i, in_j); only with "
                  "store_matrices=True"),
    },
    "fourier": {
        "neuron_freq": V("neuron frequency", "1",
                         "frequency k holding the largest share of each neuron's centred 2-D "
                         "Fourier norm (0: below min_share, or dead)"),
        "neuron_freq_share": V("neuron frequency share", "1",
                               "share of the neuron's centred squared Fourier norm its "
                               "frequency holds"),
        "freq_share": V("share of neurons per frequency", "1",
                        "fraction of all neurons whose neuron_freq is k"),
        "key_freqs": V("key frequencies used", "1",
                       "True for the key set the losses use (the final step's by default)"),
        "key_freqs_step": V("key frequencies of this step", "1",
                            "True for this step's own key set"),
        "embed_key_freqs": V("embedding key frequencies", "1",
                             "True where the embedding holds >= embed_key_ratio / K of its "
                             "squared Fourier norm"),
        "embed_freq_norm": V("embedding Fourier norm", "1",
                             "norm of the embedding's cos_k and sin_k components over the "
                             "token axis"),
        "readout_freq_norm": V("readout Fourier norm", "1",
                               "same for the neuron-to-logit map over the class axis (NaN "
                               "without one)"),
        "restricted_loss_freq": V("restricted loss, one frequency", "nats",
                                  "cross-entropy over all p^2 pairs keeping only frequency k "
                                  "(plus the per-class mean logits)"),
        "excluded_loss_freq": V("excluded loss, one frequency", "nats",
                                "cross-entropy over the training pairs with frequency k removed"),
        "freq_logit_share": V("logit share per frequency", "1",
                              "share of the centred logits' squared norm in frequency k's "
                              "cos/sin(w_k(a op b)) directions"),
        "n_key_freqs": V("number of key frequencies used", "1", "size of the set the losses use"),
        "n_key_freqs_step": V("number of this step's key frequencies", "1",
                              "size of this step's own key set"),
        "n_embed_key_freqs": V("number of embedding key frequencies", "1",
                               "size of the embedding's key set"),
        "all_frequencies_key": V("all frequencies key", "1",
                                 "the set used holds >= all_key_frac of the (p-1)/2 "
                                 "frequencies: the ablations test no sparsity"),
        "restricted_loss": V("restricted loss", "nats",
                             "cross-entropy over all p^2 pairs keeping only the key frequencies "
                             "(NaN when the set is empty)"),
        "excluded_loss": V("excluded loss", "nats",
                           "cross-entropy over the training pairs with every key frequency "
                           "removed (NaN when the set is empty)"),
        "loss_all": V("loss on all pairs", "nats", "unablated cross-entropy over all p^2 pairs"),
        "loss_train": V("loss on training pairs", "nats",
                        "unablated cross-entropy over the training pairs"),
        "key_logit_share": V("key-frequency logit share", "1",
                             "share of the centred logits' squared norm inside the key "
                             "subspace (Varma et al.: > 0.95, the circuit dominates)"),
        "gini_embed": V("Gini of embedding Fourier norms", "1",
                        "Gini coefficient of embed_freq_norm (0: spread evenly)"),
        "gini_readout": V("Gini of readout Fourier norms", "1",
                          "Gini coefficient of readout_freq_norm"),
        "margin": V("mean correct-class margin", "logit",
                    "mean of correct logit - largest other logit over train and test"),
        "param_norm": V("parameter L2 norm", "1", "total L2 norm of the parameters"),
        "margin_per_norm": V("margin per parameter norm", "logit",
                             "margin / param_norm (Varma et al.'s circuit efficiency)"),
    },
    "kernel": {
        "kernel_distance": V("NTK distance from the first step", "1",
                             "1 - <Theta_t, Theta_0>_F / (||Theta_t||_F ||Theta_0||_F): the "
                             "headline, scale-free"),
        "kernel_change": V("relative NTK change", "1",
                           "||Theta_t - Theta_0||_F / ||Theta_0||_F (grows with the kernel's "
                           "norm)"),
        "kernel_alignment": V("NTK alignment with the first step", "1",
                              "cosine of Theta_t and Theta_0 (1 - kernel_distance)"),
        "kernel_norm": V("NTK norm", "logit^2", "||Theta_t||_F on the n_points training inputs"),
        "kernel_norm_ratio": V("NTK norm ratio", "1", "||Theta_t||_F / ||Theta_0||_F"),
        "param_linf": V("parameter l-infinity norm", "1", "largest absolute parameter entry"),
        "margin": V("mean correct-class margin", "logit",
                    "mean of correct logit - largest other logit over the n_points inputs "
                    "(NaN for regression)"),
        "linf_margin": V("l-infinity-normalised margin", "logit",
                         "[ours] margin / param_linf ** homogeneity"),
    },
    "rqi": {
        "rqi": V("representation quality index", "1",
                 "n_parallelograms / n_quadruples (NaN for a one-dimensional modular embedding)"),
        "n_parallelograms": V("quadruples that pass", "1",
                              "quadruples whose defect is below threshold_used"),
        "n_quadruples": V("quadruples", "1", "quadruples the variant counts over"),
        "n_tokens": V("tokens", "1", "embedding rows used (the operands, '=' excluded)"),
        "embedding_dim": V("embedding dimension", "1", "d, columns of the embedding table"),
        "threshold_used": V("threshold used", "1",
                            "the defect threshold compared (threshold x d by default)"),
    },
}


def describe(measure: str, variable: str) -> Variable:
    """The :class:`Variable` of ``variable`` in ``measure``'s results (the engine's own
    variables too); ``KeyError`` when it is not documented."""
    table = VARIABLES.get(measure, {})
    if variable in table:
        return table[variable]
    if variable in ENGINE_VARIABLES:
        return ENGINE_VARIABLES[variable]
    raise KeyError(f"variable {variable!r} of measure {measure!r} is not documented in "
                   f"grokscope/measures/_variables.py")


def annotate_variables(ds: xr.Dataset, measure: str,
                       params: Mapping[str, Any] | None = None) -> xr.Dataset:
    """``ds`` with ``long_name``, ``units`` and ``description`` on every data variable and
    non-index coordinate documented for ``measure`` (engine variables included); attrs the
    measure set itself are kept. Undocumented variables are left as they are (the contract
    test fails on them). Returns a shallow copy; ``ds`` is not modified."""
    if not isinstance(ds, xr.Dataset):
        return ds
    table = {**ENGINE_VARIABLES, **VARIABLES.get(measure, {})}
    names = [*ds.data_vars, *(c for c in ds.coords if c not in ds.indexes)]
    todo = [n for n in names if n in table]
    if not todo:
        return ds
    out = ds.copy()
    for name in todo:
        var = table[name]
        attrs = dict(out[name].attrs)
        attrs.setdefault("long_name", var.long_name)
        attrs.setdefault("units", var.units_for(ds, params or {}))
        attrs.setdefault("description", var.description)
        out[name].attrs = attrs
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(measure: str) -> str:
    """The Markdown table of ``measure``'s variables (as ``docs/methods.md`` shows it)."""
    rows = ["| variable | long_name | units | description |", "|---|---|---|---|"]
    for name, var in VARIABLES[measure].items():
        rows.append(f"| `{name}` | {_cell(var.long_name)} | {_cell(var.units_text)} | "
                    f"{_cell(var.description)} |")
    return "\n".join(rows)


_BLOCK = re.compile(r"(<!-- variables: (?P<name>[\w-]+) -->\n)(.*?)(<!-- /variables -->)", re.S)


def update_markdown(text: str) -> str:
    """``text`` with every ``<!-- variables: NAME -->`` ... ``<!-- /variables -->`` block
    replaced by :func:`markdown_table` of ``NAME`` (``engine``: :data:`ENGINE_VARIABLES`)."""

    def table(m: re.Match) -> str:
        name = m.group("name")
        if name == "engine":
            rows = ["| variable | long_name | units | description |", "|---|---|---|---|"]
            rows += [f"| `{k}` | {_cell(v.long_name)} | {_cell(v.units_text)} | "
                     f"{_cell(v.description)} |" for k, v in ENGINE_VARIABLES.items()]
            body = "\n".join(rows)
        else:
            body = markdown_table(name)
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return _BLOCK.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    """``python -m grokscope.measures._variables FILE...``: rewrite the variable tables of
    each Markdown file in place."""
    for path in (argv if argv is not None else sys.argv[1:]):
        p = Path(path)
        text = p.read_text()
        new = update_markdown(text)
        if new != text:
            p.write_text(new)
            print(f"updated {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
