"""The reference trainer: train a model on a task and record the trajectory into a store.

>>> import grokscope as gs
>>> run = gs.train("modular", "mlp", "runs/add59", task_kwargs={"p": 59}, steps=2000)  # doctest: +SKIP

:func:`train` builds the task and the model, trains with full-batch (or minibatch) AdamW /
Adam / SGD, and writes step 0 and every step the recording schedule marks (plus the last
one) through a :class:`~grokscope.store.recorder.Recorder`, with the metrics ``train_loss``,
``train_acc``, ``test_loss``, ``test_acc`` (accuracies for classification only), ``lr`` and,
with the GrokAlign regulariser, ``jac_reg``. Each record also saves the optimizer state and the
trainer's random-number state, so calling :func:`train` again on the same store with more
``steps`` continues the run exactly where it stopped (bit for bit, given the same device).

Speed: the data live on the device as tensors, minibatches are index tensors drawn from a
seeded ``torch.Generator``, and nothing is copied to Python between recorded steps (no
per-step ``.item()``); evaluation runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._device import pick_device
from ._threads import auto_threads, available_cpus, check_threads, torch_threads
from .data import Data
from .errors import ConfigError, GrokscopeError, NotAStoreError, StoreError

__all__ = ["TrainError", "train"]

OPTIMIZERS = ("adamw", "adam", "sgd")
LOSSES = ("auto", "ce", "mse")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: config keys that may change between a run and its continuation
RESUMABLE_KEYS = frozenset({"progress", "device", "eval_every", "stop_when", "steps",
                            "num_threads"})
#: config keys the Recorder derives from the model (not settings): never a reason to refuse
DERIVED_KEYS = frozenset({"anatomy"})
#: evaluation chunk (rows) bounding memory on large splits
EVAL_CHUNK = 16384


class TrainError(GrokscopeError):
    """Training could not continue (e.g. a store whose last record has no resume state)."""


# ----------------------------------------------------------------------------- helpers
def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"train: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, minimum: float, *, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"train: {name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ConfigError(f"train: {name} must be {op} {minimum}, got {value!r}")
    return float(value)


def _resolve_dtype(dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    for name, dt in DTYPES.items():
        if dtype == name or dtype is dt:
            return name, dt
    raise ConfigError(f"train: dtype={dtype!r}; use one of {list(DTYPES)}")


def _make_data(task: str | dict | Data, task_kwargs: dict | None) -> Data:
    if isinstance(task, Data):
        if task_kwargs:
            raise ConfigError("train: task_kwargs apply to a task name or spec, not to a Data")
        return task
    from .tasks import from_spec, make_task

    if isinstance(task, str):
        return make_task(task, **(task_kwargs or {}))
    if isinstance(task, Mapping):
        return from_spec({**task, **(task_kwargs or {})})
    raise ConfigError(
        f"train: task must be a task name, a task spec dict or a grokscope.Data, got "
        f"{type(task).__name__}"
    )


def _make_model(model: Any, data: Data, model_kwargs: dict | None, seed: int,
                trust_code: bool = False) -> nn.Module:
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ConfigError("train: model_kwargs apply to a model name, spec or class, "
                              "not to an instance")
        return model
    from . import models

    kwargs = dict(model_kwargs or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, str) or (isinstance(model, Mapping) and "name" in model):
            return models.model_for(dict(model) if isinstance(model, Mapping) else model,
                                    data, **kwargs)
        if isinstance(model, Mapping):
            spec = {**model, "kwargs": {**(model.get("kwargs") or {}), **kwargs}}
            return models.build_from_spec(spec, trust_code=trust_code)
        if isinstance(model, type) and issubclass(model, nn.Module):
            builtin = {models.MLP: "mlp", models.Transformer: "transformer"}.get(model)
            if builtin is not None:  # sizes inferred from the data
                return models.model_for(builtin, data, **kwargs)
            return models.build_model(model, **kwargs)
    raise ConfigError(
        f"train: model must be a model name, a spec dict, an nn.Module class or instance, got "
        f"{type(model).__name__}"
    )


def _make_optimizer(name: str, params: list[nn.Parameter], *, lr: float, weight_decay: float,
                    betas: tuple[float, float], momentum: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def _param_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """Total L2 norm of ``params`` as a 0-d tensor (no host sync)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p) for p in params]))


def _project(params: list[nn.Parameter], target: float) -> None:
    """Rescale ``params`` in place so their total L2 norm is ``target`` (Omnigrok)."""
    with torch.no_grad():
        scale = target / _param_norm(params).clamp_min(1e-30)
        torch._foreach_mul_(params, scale)


class _Objective:
    """The training loss and the evaluation metrics of one split layout."""

    def __init__(self, loss: str, classification: bool, n_classes: int | None) -> None:
        self.loss = loss
        self.classification = classification
        self.n_classes = n_classes

    def targets(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``y`` as the loss expects it (one-hot floats for MSE on class labels)."""
        if self.loss == "mse" and self.classification:
            return F.one_hot(y, self.n_classes).to(dtype)
        return y

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss == "ce":
            return F.cross_entropy(out, target)
        return F.mse_loss(out, target.reshape(out.shape))

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and accuracy (None for regression) over a split, as 0-d tensors."""
        n = x.shape[0]
        if n == 0:
            nan = torch.tensor(float("nan"), device=x.device)
            return nan, (nan if self.classification else None)
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.float64, device=x.device)
        for i in range(0, n, EVAL_CHUNK):
            out = model(x[i:i + EVAL_CHUNK])
            t = target[i:i + EVAL_CHUNK]
            loss_sum += self(out, t).double() * out.shape[0]
            if self.classification:
                correct += (out.argmax(1) == y[i:i + EVAL_CHUNK]).sum()
        return loss_sum / n, (correct / n if self.classification else None)


def _stored_config(out: str | Path, storage_options: dict | None) -> dict | None:
    """The config of an existing store at ``out`` with committed steps, else None."""
    from .store.run import open_run

    if isinstance(out, str | Path) and "://" not in str(out):
        p = Path(out)
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            return None
    try:
        run = open_run(out, storage_options=storage_options)
    except NotAStoreError:
        return None
    if len(run.steps) == 0:
        return None
    return dict(run.config)


def _config_diff(stored: dict, new: dict) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(new)):
        if key in RESUMABLE_KEYS or key in DERIVED_KEYS:
            continue
        a, b = stored.get(key, "<missing>"), new.get(key, "<missing>")
        if a != b:
            out.append(f"{key}: stored {a!r}, given {b!r}")
    return out


def _json(value: Any) -> Any:
    """A JSON round-trip of ``value`` so that tuples compare equal to stored lists."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value



def _check_stop_when(stop_when: Any, metric_names: list[str]) -> dict | None:
    if stop_when is None:
        return None
    if not isinstance(stop_when, Mapping) or not stop_when:
        raise ConfigError(
            "train: stop_when must be a dict such as {'test_acc': 0.99, 'patience': 300}"
        )
    rule = dict(stop_when)
    patience = _check_int("stop_when['patience']", rule.pop("patience", 0), 0)
    if not rule:
        raise ConfigError("train: stop_when names no metric; e.g. {'test_acc': 0.99}")
    for name, thr in rule.items():
        if name not in metric_names:
            raise ConfigError(
                f"train: stop_when names metric {name!r}; this run records {metric_names}"
            )
        _check_float(f"stop_when[{name!r}]", thr, -math.inf)
    return {"thresholds": {k: float(v) for k, v in rule.items()}, "patience": patience}


def _met(rule: dict, metrics: dict[str, float]) -> bool:
    """Losses must fall to their threshold, everything else rise to it."""
    for name, thr in rule["thresholds"].items():
        v = metrics[name]
        if not (v <= thr if name.endswith("_loss") else v >= thr):
            return False
    return True


# ----------------------------------------------------------------------------- train
def train(
    task: str | dict | Data = "modular",
    model: str | dict | type | nn.Module = "mlp",
    out: str | Path | None = None,
    *,
    task_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
    steps: int = 10_000,
    lr: float = 1e-3,
    weight_decay: float = 1.0,
    optimizer: str = "adamw",
    betas: tuple[float, float] = (0.9, 0.98),
    momentum: float = 0.0,
    batch_size: int | None = None,
    warmup: int = 0,
    loss: str = "auto",
    dtype: str | torch.dtype = "float32",
    jacobian_reg: float = 0.0,
    norm_project: float | None = None,
    schedule: Any = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    eval_every: int | None = None,
    overwrite: bool = False,
    stop_when: dict | None = None,
    compression: str | None = None,
    storage_options: dict | None = None,
    num_threads: int | str | None = "auto",
    trust_code: bool = False,
) -> Any:
    """Train a model on a task, recording the trajectory into the store ``out``.

    Parameters
    ----------
    task : str, dict or Data
        A task name (``"modular"``, ``"parity"``, ``"teacher"``, ``"digits"``; parameters in
        ``task_kwargs``), a task spec (``data.task``), or a ready :class:`~grokscope.Data`.
    model : str, dict, nn.Module class or instance
        A registered model name (sizes inferred from the data, see
        :func:`grokscope.models.model_for`; constructor arguments in ``model_kwargs``), a
        model spec, a class, or an instance (trained in place).
    out : str or Path, optional
        The store (local folder or fsspec URL). ``None``: a new temporary folder (its path is
        ``run.path``). An existing store is *continued* from its last record (same settings
        required, see ``overwrite``).
    steps : int
        Total optimizer steps of the run (a continuation trains up to this many).
    lr, weight_decay : float
        Learning rate; decoupled (AdamW) or L2 (Adam, SGD) weight decay.
    optimizer : {"adamw", "adam", "sgd"}
    betas : (float, float)
        Adam(W) betas.
    momentum : float
        SGD momentum.
    batch_size : int, optional
        Minibatch size; ``None`` (or ``>= n_train``) is full batch. Minibatches are shuffled
        epochs (the incomplete last batch of each epoch dropped) drawn from a generator
        seeded with ``seed``.
    warmup : int
        Linear learning-rate warm-up: step ``t < warmup`` uses ``lr * (t + 1) / warmup``.
    loss : {"auto", "ce", "mse"}
        ``"auto"``: the task spec's ``"loss"`` if any, else cross-entropy for class labels and
        MSE for float targets. MSE on class labels regresses one-hot targets.
    dtype : {"float32", "float64"}
        Parameter and float-input precision.
    jacobian_reg : float
        GrokAlign's lambda: adds ``lambda * mean_x ||J_x||_F`` (one random projection per
        sample, :func:`grokscope.regularizers.jacobian_norm_penalty`) to the loss; its value on
        the training split (fixed-seed estimate) is recorded as ``jac_reg``.
    norm_project : float, optional
        Omnigrok's alpha: the parameters are rescaled to total L2 norm
        ``alpha * ||theta_init||`` at step 0 and after every optimizer step.
    schedule : Schedule or dict, optional
        Recording schedule (a :class:`~grokscope.store.schedule.Schedule` or its keyword
        arguments); default ``Schedule()``. The last step is always recorded too.
    seed : int
        Seeds the model initialisation, the minibatch order and the regulariser's projections.
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
    progress : bool
        A tqdm bar with the latest train/test accuracy.
    eval_every : int, optional
        Also evaluate (for the progress bar and ``stop_when``) every this many steps; metrics
        are always evaluated at recorded steps, and only those are stored.
    overwrite : bool
        Replace an existing store at ``out`` instead of continuing it.
    stop_when : dict, optional
        Early stop, e.g. ``{"test_acc": 0.99, "patience": 300}``: once every named metric
        reaches its threshold (``*_loss`` at or below, others at or above) at an evaluation,
        train ``patience`` more steps, record, and stop.
    compression : {None, "lz4"}
        Store compression (see :class:`~grokscope.store.recorder.Recorder`).
    storage_options : dict, optional
        fsspec options for URL stores.
    trust_code : bool
        Allow a ``{"factory": "module:qualname", ...}`` model spec (e.g. one read from a store)
        to import that code; registered names and classes never need it.
    num_threads : "auto", int or None
        CPU threads for torch while training (restored afterwards). ``"auto"`` (default)
        measures: about a second of forward+backward passes of this model on this batch shape
        at 1, 2, 4, ... threads up to the CPUs the process may use, and keeps the fastest
        (fewer threads unless more are >10% faster; see :mod:`grokscope._threads`; cached per
        model shape, batch and device in the process; on a GPU torch's setting is left alone).
        An int sets the count; ``None`` leaves torch's setting. The count used is recorded as
        ``config["num_threads"]``. Threads change float rounding (~1e-6 after 50 steps), so
        an exact rerun needs the same count: a continuation under ``"auto"`` keeps the
        recorded count (when this machine has that many CPUs). Why it matters: the README's
        ``p = 97`` run took 280 s with torch's default threads on a busy 2-core machine and
        36 s with one, while on the same machine idle two threads were 1.6x faster than one.

    Returns
    -------
    Run
        The recorded run (:func:`grokscope.open_run` of ``out``).

    Raises
    ------
    ConfigError
        A bad argument, or ``out`` holds a run with other settings (without ``overwrite``).
    TrainError
        ``out`` holds a run that cannot be continued (no resume state at its last step).
    """
    from .store.recorder import Recorder
    from .store.run import open_run
    from .store.schedule import Schedule

    # ---------------------------------------------------------------- arguments
    steps = _check_int("steps", steps, 0)
    lr = _check_float("lr", lr, 0.0, strict=True)
    weight_decay = _check_float("weight_decay", weight_decay, 0.0)
    momentum = _check_float("momentum", momentum, 0.0)
    jacobian_reg = _check_float("jacobian_reg", jacobian_reg, 0.0)
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"train: unknown optimizer {optimizer!r}; use one of {list(OPTIMIZERS)}")
    if loss not in LOSSES:
        raise ConfigError(f"train: unknown loss {loss!r}; use one of {list(LOSSES)}")
    if not isinstance(betas, list | tuple) or len(betas) != 2:
        raise ConfigError(f"train: betas must be a pair of floats in [0, 1), got {betas!r}")
    betas = tuple(_check_float("betas", b, 0.0) for b in betas)
    if any(b >= 1 for b in betas):
        raise ConfigError(f"train: betas must lie in [0, 1), got {betas!r}")
    batch_size = _check_int("batch_size", batch_size, 1, allow_none=True)
    warmup = _check_int("warmup", warmup, 0)
    seed = _check_int("seed", seed, 0)
    eval_every = _check_int("eval_every", eval_every, 1, allow_none=True)
    num_threads = check_threads(num_threads, "train: num_threads")
    if norm_project is not None:
        norm_project = _check_float("norm_project", norm_project, 0.0, strict=True)
    dtype_name, torch_dtype = _resolve_dtype(dtype)
    dev = pick_device(device, who="train")
    if schedule is None:
        schedule = Schedule()
    elif isinstance(schedule, Mapping):
        schedule = Schedule(**schedule)
    elif not isinstance(schedule, Schedule):
        raise ConfigError(
            f"train: schedule must be a Schedule or its kwargs dict, got {type(schedule).__name__}"
        )

    data = _make_data(task, task_kwargs)
    net = _make_model(model, data, model_kwargs, seed, trust_code)
    classification = data.is_classification
    if loss == "auto":
        spec_loss = (data.task or {}).get("loss")
        loss = spec_loss if spec_loss in ("ce", "mse") else ("ce" if classification else "mse")
    if loss == "ce" and not classification:
        raise ConfigError(
            "train: loss='ce' needs integer class labels, but this task has float targets; "
            "use loss='mse'"
        )
    metric_names = ["train_loss", "test_loss", "lr"]
    if classification:
        metric_names += ["train_acc", "test_acc"]
    if jacobian_reg > 0:
        metric_names.append("jac_reg")
    stop_rule = _check_stop_when(stop_when, metric_names)

    from .models import spec_of

    config = _json({
        "trainer": "grokscope.train",
        "task": data.task,
        "model": spec_of(net),
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "betas": list(betas),
        "momentum": momentum,
        "batch_size": batch_size,
        "warmup": warmup,
        "loss": loss,
        "dtype": dtype_name,
        "jacobian_reg": jacobian_reg,
        "norm_project": norm_project,
        "seed": seed,
        "device": str(dev),
        "eval_every": eval_every,
        "steps": steps,
        "stop_when": dict(stop_when) if stop_when is not None else None,
        "schedule": schedule.to_dict(),
    })

    if out is None:
        out = tempfile.mkdtemp(prefix="grokscope-run-")
    stored = None if overwrite else _stored_config(out, storage_options)
    if stored is not None:
        diff = _config_diff(stored, config)
        if diff:
            raise ConfigError(
                f"train: {out} holds a run with other settings ({'; '.join(diff)}). Pass the "
                "same settings to continue it, overwrite=True to replace it, or another out"
            )

    # ---------------------------------------------------------------- state
    net = net.to(device=dev, dtype=torch_dtype)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("train: the model has no trainable parameters")
    opt = _make_optimizer(optimizer, params, lr=lr, weight_decay=weight_decay, betas=betas,
                          momentum=momentum)
    dd = data.to(dev, torch_dtype)
    objective = _Objective(loss, classification, data.n_classes)
    t_train = objective.targets(dd.y_train, torch_dtype)
    t_test = objective.targets(dd.y_test, torch_dtype)
    n_train = dd.x_train.shape[0]
    full_batch = batch_size is None or batch_size >= n_train
    batch_gen = torch.Generator().manual_seed(seed)
    reg_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    perm, pos = None, n_train  # the current epoch's order and position in it
    target_norm = None
    met_at = None  # the first evaluated step at which stop_when was met
    start = 0

    if num_threads == "auto" and stored is not None:
        recorded = stored.get("num_threads")  # an exact continuation needs the same count
        if isinstance(recorded, int) and 1 <= recorded <= available_cpus():
            num_threads = recorded
    rows = n_train if full_batch else batch_size
    num_threads, calibration = auto_threads(
        num_threads, net, dd.x_train[:rows], device=dev,
        loss=lambda out: objective(out, t_train[:rows]), key_extra=("train", loss),
        expected_calls=max(1, steps))
    if calibration is not None and progress:
        print(f"train: {calibration.summary()}", file=sys.stderr, flush=True)
    config["num_threads"] = num_threads
    rec_config = config if stored is None else None  # continuing: keep the stored config
    with torch_threads(num_threads), Recorder(
        out, net, data, config=rec_config, schedule=schedule, overwrite=overwrite,
        compression=compression, storage_options=storage_options,
    ) as rec:
        if rec.last_step is not None:
            state = rec.resume_state()
            if state is None or state["step"] != rec.last_step:
                raise TrainError(
                    f"train: {out} ends at step {rec.last_step} without a resume state (optimizer "
                    "and RNG) for that step, so it cannot be continued exactly; use "
                    "overwrite=True or another out"
                )
            start = int(state["step"])
            sd = open_run(out, storage_options=storage_options).state_dict_at(start)
            net.load_state_dict(sd)
            opt.load_state_dict(state["optimizer"])
            extra = state["extra"] or {}
            batch_gen.set_state(extra["batch_gen"])
            if extra.get("reg_gen_device") == dev.type:
                reg_gen.set_state(extra["reg_gen"])
            elif jacobian_reg > 0:
                warnings.warn(
                    f"train: continuing a run recorded on {extra.get('reg_gen_device')} on "
                    f"{dev.type}; the regulariser's random projections are reseeded, so the "
                    "continuation is not bit-identical to an uninterrupted run",
                    UserWarning, stacklevel=3)
            perm = extra.get("perm")
            perm = perm.to(dev) if perm is not None else None
            pos = int(extra.get("pos", n_train))
            target_norm = extra.get("target_norm")
            if extra.get("stop_rule") == stop_rule:  # a new rule starts afresh
                met_at = extra.get("met_at")
        elif norm_project is not None:
            with torch.no_grad():
                target_norm = norm_project * float(_param_norm(params))
            _project(params, target_norm)

        # the regulariser differentiates at the model's input role (its anatomy, resolved once)
        reg_view = None
        if jacobian_reg > 0:
            from .anatomy import ModelView, resolve

            reg_view = ModelView(net, resolve(net, dd))

        def lr_at(t: int) -> float:
            return lr * min(1.0, (t + 1) / warmup) if warmup else lr

        def evaluate(t: int) -> dict[str, float]:
            net.eval()
            with torch.no_grad():
                tr_loss, tr_acc = objective.evaluate(net, dd.x_train, dd.y_train, t_train)
                te_loss, te_acc = objective.evaluate(net, dd.x_test, dd.y_test, t_test)
                vals = [tr_loss, te_loss] + ([tr_acc, te_acc] if classification else [])
            if jacobian_reg > 0:
                from .regularizers import jacobian_norm_penalty

                g = torch.Generator(device=dev).manual_seed(seed + 2)
                total = torch.zeros((), dtype=torch.float64, device=dev)
                for i in range(0, n_train, EVAL_CHUNK):
                    xc = dd.x_train[i:i + EVAL_CHUNK]
                    total += jacobian_norm_penalty(reg_view, xc, n_proj=1,
                                                   generator=g).detach().double() * len(xc)
                vals.append(total / n_train)
            net.train()
            nums = torch.stack([v.double().to(dev) for v in vals]).tolist()  # one host sync
            names = ["train_loss", "test_loss"] + (
                ["train_acc", "test_acc"] if classification else []) + (
                ["jac_reg"] if jacobian_reg > 0 else [])
            m = dict(zip(names, nums))
            m["lr"] = lr_at(t)
            return m

        def resume_extra() -> dict:
            return {
                "batch_gen": batch_gen.get_state(),
                "reg_gen": reg_gen.get_state(),
                "reg_gen_device": dev.type,
                "perm": None if perm is None else perm.cpu(),
                "pos": pos,
                "target_norm": target_norm,
                "met_at": met_at,
                "stop_rule": stop_rule,
            }

        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=min(start, steps), disable=not progress,
                   desc="train", unit="step", dynamic_ncols=True, leave=True)
        tick, last_tick = max(1, steps // 200), min(start, steps)
        penalty_fn = None
        if jacobian_reg > 0:
            from .regularizers import jacobian_norm_penalty as penalty_fn
        net.train()
        try:
            t = start
            while True:
                stop_now = met_at is not None and t >= met_at + stop_rule["patience"]
                last = t >= steps or stop_now
                record = (rec.last_step is None or t > rec.last_step) and (rec.due(t) or last)
                if record or (eval_every is not None and t % eval_every == 0 and t > start):
                    m = evaluate(t)
                    if stop_rule is not None and met_at is None and _met(stop_rule, m):
                        met_at = t
                    if met_at is not None and t >= met_at + stop_rule["patience"]:
                        last = True
                        record = rec.last_step is None or t > rec.last_step
                    if record:
                        rec.record(t, net, m, optimizer=opt, extra=resume_extra())
                    shown = ("train_acc", "test_acc") if classification else ("train_loss",
                                                                                 "test_loss")
                    fmt = ".3f" if classification else ".3g"
                    bar.set_postfix({k: format(m[k], fmt) for k in shown}, refresh=False)
                if last:
                    if t < steps:
                        bar.total = t  # stopped early: the bar ends full
                    break
                # ------------------------------------------------ one optimizer step
                if warmup and t <= warmup:
                    for group in opt.param_groups:
                        group["lr"] = lr_at(t)
                if full_batch:
                    xb, yb = dd.x_train, t_train
                else:
                    if pos + batch_size > n_train:
                        perm = torch.randperm(n_train, generator=batch_gen).to(dev)
                        pos = 0
                    idx = perm[pos:pos + batch_size]
                    pos += batch_size
                    xb, yb = dd.x_train[idx], t_train[idx]
                objective_value = objective(net(xb), yb)
                if penalty_fn is not None:
                    objective_value = objective_value + jacobian_reg * penalty_fn(
                        reg_view, xb, n_proj=1, generator=reg_gen)
                opt.zero_grad(set_to_none=True)
                objective_value.backward()
                opt.step()
                if target_norm is not None:
                    _project(params, target_norm)
                t += 1
                if t - last_tick >= tick:
                    bar.update(t - last_tick)
                    last_tick = t
        finally:
            bar.update(max(0, min(t, steps) - last_tick))
            bar.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        run = open_run(out, storage_options=storage_options)
    if not len(run.steps):
        raise StoreError(f"train: nothing was recorded in {out}")
    return run
