"""A store carries its model: torch.export programs, model= plumbing, fresh modules, safety."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import grokscope as gs
from grokscope.errors import (
    ConfigError,
    CorruptStoreError,
    DataError,
    ModelMismatchError,
    UntrustedCodeError,
)
from grokscope.store import Recorder, open_run
from grokscope.store.portable import check_program, export_model, fresh_copy, load_exported
from tests._checkpoint_factories import trajectory, write_per_epoch
from tests._zoo import RawTransformer as ZooRawTransformer

P = 7  # vocabulary of the token models


# --------------------------------------------------------------------------- models
class EmbedMLP(nn.Module):
    """nn.Embedding front end + MLP, a persistent and a non-persistent buffer."""

    def __init__(self, width: int = 16, d: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(P, d)
        self.mlp = nn.Sequential(nn.Linear(2 * d, width), nn.ReLU(), nn.Linear(width, P))
        self.register_buffer("scale", torch.linspace(0.5, 1.5, P))
        self.register_buffer("mask", torch.ones(P), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(x).flatten(1)) * self.scale * self.mask


def RawTransformer() -> nn.Module:
    """Nanda-style one-layer transformer, raw parameters through einsum (the test zoo's)."""
    return ZooRawTransformer(P, d_model=16, d_mlp=32, num_heads=2)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return self.fc(x)
        return -self.fc(x)


class Sized(nn.Module):
    """Needs constructor arguments (so a stored class spec is useless without kwargs)."""

    def __init__(self, width: int, d_in: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def _floats(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def _tokens(n: int, seed: int = 0, ctx: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, P, (n, ctx), generator=g)
    if ctx == 3:
        x[:, -1] = P  # the '=' token
    return x


def _float_data(n_train: int = 12, n_test: int = 8) -> gs.Data:
    return gs.Data(_floats(n_train, 1), torch.randint(0, 3, (n_train,)),
                   _floats(n_test, 2), torch.randint(0, 3, (n_test,)), task={"name": "toy"})


def _token_data(n_train: int = 20, n_test: int = 9) -> gs.Data:
    x, xt = _tokens(n_train, 1), _tokens(n_test, 2)
    return gs.Data(x, x.sum(1) % P, xt, xt.sum(1) % P, task={"name": "toy-tokens"})


def _record(path, model, data, steps=(0, 3, 7), **kw) -> dict[int, dict[str, torch.Tensor]]:
    """Record ``steps`` with distinct weights; returns the state dict recorded at each step."""
    recorded = {}
    with Recorder(path, model, data, **kw) as rec:
        for s in steps:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * (s + 1))
            recorded[s] = {k: v.clone() for k, v in model.state_dict().items()}
            rec.record(s)
    return recorded


# --------------------------------------------------------------------------- round trips
CASES = {
    "sequential-mlp": (_sequential, lambda n, seed=0: _floats(n, seed), "0"),
    "embedding-mlp": (EmbedMLP, lambda n, seed=0: _tokens(n, seed), "mlp.0"),
    "raw-einsum-transformer": (RawTransformer, lambda n, seed=0: _tokens(n, seed, ctx=3),
                               "blocks.0.mlp"),
}


@functools.cache
def _program(case: str) -> bytes:
    """The exported program of ``CASES[case]`` (seed 0), exported once per test session."""
    make, inputs, _ = CASES[case]
    torch.manual_seed(0)
    raw, err = export_model(make().eval(), inputs(20))
    assert err is None and isinstance(raw, bytes), err
    return raw


@pytest.mark.parametrize("case", list(CASES))
def test_export_roundtrip(case):
    make, inputs, hooked = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    rebuilt = load_exported(_program(case))
    # the original names and shapes, buffers included
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == want
    # the program stores the architecture, not the weights (the store keeps those per step)
    assert all(not v.any() for v in rebuilt.state_dict().values())
    torch.manual_seed(1)
    other = make().eval()
    rebuilt.load_state_dict(other.state_dict())
    # batch sizes other than the example (3): 7 and 1
    for n in (7, 1):
        x = inputs(n, seed=5)
        torch.testing.assert_close(rebuilt(x), other(x), rtol=0, atol=1e-6)
    # a forward hook fires on the submodule by its dotted name, with the original's output
    x = inputs(5, seed=6)
    seen, want_out = [], []
    rebuilt.get_submodule(hooked).register_forward_hook(lambda m, i, o: seen.append(o))
    h = other.get_submodule(hooked).register_forward_hook(lambda m, i, o: want_out.append(o))
    other(x)
    h.remove()
    rebuilt(x)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], want_out[0], rtol=0, atol=1e-6)
    # torch.func: Jacobians w.r.t. the parameters agree
    params = {k: v.detach() for k, v in other.named_parameters()}
    j_rebuilt = jacrev(lambda p: functional_call(rebuilt, p, (x,)))(params)
    j_other = jacrev(lambda p: functional_call(other, p, (x,)))(params)
    assert set(j_rebuilt) == set(params)
    for k in params:
        torch.testing.assert_close(j_rebuilt[k], j_other[k], rtol=1e-5, atol=1e-6)


def test_export_jacobian_wrt_inputs_and_hook_replacement():
    seq = _sequential().eval()
    rebuilt = load_exported(_program("sequential-mlp"))
    rebuilt.load_state_dict(seq.state_dict())
    x = _floats(4, 3)
    j = torch.func.vmap(jacrev(lambda z: rebuilt(z[None])[0]))(x)
    torch.testing.assert_close(j, torch.func.vmap(jacrev(lambda z: seq(z[None])[0]))(x))
    # replacing a module's output through a forward hook: gradients flow to the leaf
    tf = RawTransformer().eval()
    rebuilt = load_exported(_program("raw-einsum-transformer"))
    rebuilt.load_state_dict(tf.state_dict())
    leaf = torch.randn(2, 3, 16, requires_grad=True)
    rebuilt.get_submodule("embed").register_forward_hook(lambda m, i, o: leaf)
    rebuilt(_tokens(2, ctx=3)).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


class Tied(nn.Module):
    """Embedding and unembedding share one parameter (two state-dict keys, one tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(P, 5)
        self.mid = nn.Linear(5, 5)
        self.unembed = nn.Linear(5, P, bias=False)
        self.unembed.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unembed(torch.relu(self.mid(self.embed(x))))[:, -1]


def test_fresh_copy_takes_the_weights_and_keeps_ties():
    model = Tied().eval()
    raw, err = export_model(model, _tokens(10))
    assert err is None
    template = load_exported(raw)
    assert set(template.state_dict()) == set(model.state_dict())
    for source in (template, model):
        sd = {k: v.detach().clone() + 1 for k, v in model.state_dict().items()}
        copy_ = fresh_copy(source, sd)
        assert copy_.get_submodule("embed").weight is copy_.get_submodule("unembed").weight
        assert copy_.get_submodule("mid").weight.data_ptr() == sd["mid.weight"].data_ptr()
        reference = Tied().eval()
        reference.load_state_dict(sd)
        x = _tokens(4, 3)
        torch.testing.assert_close(copy_(x), reference(x), rtol=0, atol=1e-6)
        assert not torch.equal(source.get_submodule("mid").weight, sd["mid.weight"])


def test_fresh_copy_shares_nothing_mutable():
    tf = RawTransformer().eval()
    template = load_exported(_program("raw-einsum-transformer"))
    a, b = fresh_copy(template), fresh_copy(template)
    a.load_state_dict(tf.state_dict())
    assert all(not v.any() for v in b.state_dict().values())  # b untouched by a's weights
    assert all(not v.any() for v in template.state_dict().values())
    a.get_submodule("blocks.0").register_forward_hook(lambda m, i, o: o * 0)
    x = _tokens(3, ctx=3)
    b.load_state_dict(tf.state_dict())
    torch.testing.assert_close(b(x), tf(x), rtol=0, atol=1e-6)  # a's hook is a's alone


# --------------------------------------------------------------------------- recording
def test_recorder_stores_the_program_and_rebuilds_without_code(tmp_path):
    def local_class():  # defined in a function: no process can import it
        class Hidden(EmbedMLP):
            pass
        return Hidden()

    model = local_class()
    data = _token_data()
    recorded = _record(tmp_path / "run.zarr", model, data)
    run = open_run(tmp_path / "run.zarr")
    info = run.meta["program"]
    assert info["key"] == "_model/program" and info["torch"] == torch.__version__
    assert info["nbytes"] > 0 and "export_error" not in run.meta
    assert run.config["model"]["factory"].endswith("local_class.<locals>.Hidden")
    assert run.model_source == "exported"
    for step, sd in recorded.items():
        m = run.model_at(step)
        model.load_state_dict(sd)
        torch.testing.assert_close(m(data.x_test), model.eval()(data.x_test), rtol=0, atol=0)
    # the anatomy was described on the original model and stored
    assert "anatomy" in run.config
    assert run.info()["program"]["nbytes"] == info["nbytes"]
    # the program group does not disturb plain xarray
    import xarray as xr

    assert "embed.weight" in xr.open_zarr(tmp_path / "run.zarr").data_vars


def test_data_dependent_model_falls_back_with_one_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _record(tmp_path / "run.zarr", DataDependent(), _float_data())
    mine = [w for w in caught if "torch.export" in str(w.message)]
    assert len(mine) == 1 and "\n" not in str(mine[0].message)
    assert "data-dependent" in str(mine[0].message)
    run = open_run(tmp_path / "run.zarr")
    assert run.meta["program"] is None and "data-dependent" in run.meta["export_error"]
    assert run.config["model"] == {"factory": "tests.test_portable_model:DataDependent",
                                   "kwargs": None}
    assert run.model_source == "none"
    with pytest.raises(UntrustedCodeError) as exc:
        run.model_at(0)
    for option in ("model=", "--model module:Class --model-kwargs JSON", "trust_code=True",
                   "data-dependent"):
        assert option in str(exc.value)
    trusted = open_run(tmp_path / "run.zarr", trust_code=True)
    assert trusted.model_source == "factory"
    assert isinstance(trusted.model_at(3), DataDependent)


def test_class_with_stored_kwargs(tmp_path):
    data = _float_data()
    recorded = _record(tmp_path / "run.zarr", Sized(width=5), data, model_kwargs={"width": 5},
                       export_program=False)
    run = open_run(tmp_path / "run.zarr")
    assert run.config["model"] == {"factory": "tests.test_portable_model:Sized",
                                   "kwargs": {"width": 5}}
    assert "program" in run.meta and run.meta["program"] is None
    m = open_run(tmp_path / "run.zarr", model=Sized).model_at(7)  # the class, stored kwargs
    assert m.fc1.out_features == 5 and torch.equal(m.fc1.weight, recorded[7]["fc1.weight"])
    trusted = open_run(tmp_path / "run.zarr", trust_code=True)
    assert trusted.model_source == "factory"
    assert torch.equal(trusted.model_at(3).fc2.bias, recorded[3]["fc2.bias"])
    with pytest.raises(ConfigError, match="model_kwargs"):
        Recorder(tmp_path / "run.zarr", Sized(width=5), data, model_kwargs={"width": 6})


def test_model_at_returns_fresh_modules_and_never_mutates_the_callers(tmp_path):
    data = _float_data()
    recorded = _record(tmp_path / "run.zarr", _sequential(), data)
    mine = _sequential()
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    for run, kw in ((open_run(tmp_path / "run.zarr", model=mine), {}),
                    (open_run(tmp_path / "run.zarr"), {"model": mine})):
        a, b = run.model_at(3, **kw), run.model_at(3, **kw)
        assert a is not b and a is not mine and b is not mine
        assert run.model_source == ("caller" if not kw else "exported")
        assert a[0].weight.data_ptr() != b[0].weight.data_ptr()
        with torch.no_grad():
            a[0].weight.add_(1.0)
        assert torch.equal(b[0].weight, recorded[3]["0.weight"])
        c = run.model_at(7, **kw)
        assert torch.equal(c[0].weight, recorded[7]["0.weight"])
        assert torch.equal(b[0].weight, recorded[3]["0.weight"])  # an earlier step unaffected
        for k, v in mine.state_dict().items():
            assert torch.equal(v, before[k])
    # the stored program, too, gives a new module per call
    run = open_run(tmp_path / "run.zarr")
    a, b = run.model_at(0), run.model_at(0)
    w = "0.weight"
    assert a is not b and a.state_dict()[w].data_ptr() != b.state_dict()[w].data_ptr()
    # a zero-argument factory and a mismatch
    assert open_run(tmp_path / "run.zarr", model=_sequential).model_source == "caller"
    with pytest.raises(ModelMismatchError, match="0.weight"):
        open_run(tmp_path / "run.zarr", model=lambda: nn.Sequential(nn.Linear(4, 5))).model_at(0)
    with pytest.raises(ConfigError, match="zero-argument factory"):
        open_run(tmp_path / "run.zarr", model=42)


def test_script_registered_name_falls_back_to_the_program(tmp_path):
    from grokscope.models import _MODELS, register_model

    register_model("portable-test-sized", Sized, overwrite=True)
    try:
        from grokscope.models import build_model

        model = build_model("portable-test-sized", width=4)
        recorded = _record(tmp_path / "run.zarr", model, _float_data())
        assert open_run(tmp_path / "run.zarr").model_source == "registered"
    finally:
        del _MODELS["portable-test-sized"]  # as in a process that never registered it
    run = open_run(tmp_path / "run.zarr")
    assert run.config["model"]["name"] == "portable-test-sized"
    assert run.model_source == "exported"
    assert torch.equal(run.model_at(7).state_dict()["fc1.weight"], recorded[7]["fc1.weight"])


def test_builtin_models_are_rebuilt_by_name_without_a_program(tmp_path):
    from grokscope.models import model_for

    data = _token_data()
    _record(tmp_path / "run.zarr", model_for("mlp", data, width=8), data)
    run = open_run(tmp_path / "run.zarr")
    assert run.meta["program"] is None and "export_error" not in run.meta
    assert run.model_source == "registered"
    assert run.model_at(0) is not run.model_at(0)


# --------------------------------------------------------------------------- importing
def test_import_stores_program_and_class_kwargs(tmp_path):
    sds = trajectory(Sized(width=6), 3)
    write_per_epoch(tmp_path / "ck", sds, [0, 10, 20])
    run = gs.import_checkpoints(tmp_path / "ck", tmp_path / "run.zarr", model=Sized,
                                model_kwargs={"width": 6}, data=_float_data(), progress=False)
    assert run.config["model"] == {"factory": "tests.test_portable_model:Sized",
                                   "kwargs": {"width": 6}}
    assert run.meta["program"]["nbytes"] > 0
    assert run.model_source == "exported"
    assert torch.equal(run.model_at(20).fc1.weight, sds[2]["fc1.weight"])
    # an instance is copied, not loaded into; its model_kwargs are stored as its own
    mine = Sized(width=6)
    before = mine.fc1.weight.clone()
    run = gs.import_checkpoints(tmp_path / "ck", tmp_path / "run2.zarr", model=mine,
                                model_kwargs={"width": 6}, data=_float_data(), progress=False)
    assert torch.equal(mine.fc1.weight, before)
    assert run.config["model"]["kwargs"] == {"width": 6}


def test_import_refuses_inputs_the_model_cannot_take(tmp_path):
    two_hot = nn.Sequential(nn.Linear(2 * P, 16), nn.ReLU(), nn.Linear(16, P))
    write_per_epoch(tmp_path / "ck", trajectory(two_hot, 2), [0, 10])
    out = tmp_path / "run.zarr"
    with pytest.raises(DataError) as exc:  # integer tokens into an MLP on two-hot vectors
        gs.import_checkpoints(tmp_path / "ck", out, model=two_hot, data=_token_data(),
                              progress=False)
    msg = str(exc.value)
    assert "int64 (20, 2)" in msg and "in_features=14" in msg and "encoding" in msg
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.zarr.")
                and "lock" not in p.name]


# --------------------------------------------------------------------------- safety
def _store_with_program(tmp_path):
    _record(tmp_path / "run.zarr", Sized(width=5), _float_data(), model_kwargs={"width": 5})
    return tmp_path / "run.zarr"


def _edit_meta(path, edit):
    doc_path = path / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc.pop("consolidated_metadata", None)
    edit(doc["attributes"]["grokscope"])
    doc_path.write_text(json.dumps(doc))


@pytest.mark.parametrize("key", ["../x", "/abs", "_model/../../x", "_model/program/../../../x",
                                 "file:///etc/passwd", "data/x_train", None])
def test_crafted_program_key_is_refused(tmp_path, key):
    path = _store_with_program(tmp_path)
    (tmp_path / "x").mkdir()
    _edit_meta(path, lambda meta: meta["program"].update(key=key))
    run = open_run(path)
    with pytest.raises(CorruptStoreError, match="program key"):
        run.model_at(0)
    assert run.model_source == "none"


@pytest.mark.parametrize("edit", ["sha256", "nbytes", "chunk"])
def test_damaged_program_is_reported(tmp_path, edit):
    path = _store_with_program(tmp_path)
    if edit == "chunk":
        (path / "_model" / "program" / "c" / "0").unlink()
    else:
        _edit_meta(path, lambda meta: meta["program"].update(
            {edit: "0" * 64 if edit == "sha256" else meta["program"]["nbytes"] + 1}))
    with pytest.raises(CorruptStoreError):
        open_run(path).model_at(0)
    # a trusted factory is the fallback (with a warning), never a silent skip
    with pytest.warns(RuntimeWarning, match="trusted factory"):
        m = open_run(path, trust_code=True).model_at(0)
    assert isinstance(m, Sized)


def test_crafted_resume_key_is_refused(tmp_path):
    model, data = _sequential(), _float_data()
    with Recorder(tmp_path / "run.zarr", model, data) as rec:
        rec.record(0, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    (tmp_path / "x").mkdir()
    _edit_meta(tmp_path / "run.zarr", lambda meta: meta["commit"]["resume"].update(key="../x"))
    with pytest.raises(CorruptStoreError, match="resume key"):
        Recorder(tmp_path / "run.zarr", model, data)
    assert (tmp_path / "x").is_dir()  # the orphan clean-up deleted nothing outside the store
    from grokscope.store.run import load_resume

    with pytest.raises(CorruptStoreError, match="resume key"):
        load_resume(open_run(tmp_path / "run.zarr").store, {"step": 0, "key": "/x", "nbytes": 1})


def _program_zip(raw: bytes, edit, add: dict[str, bytes] | None = None) -> bytes:
    """``raw`` with its archive entries rewritten by ``edit(name, bytes) -> bytes``, plus
    the entries ``add``."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info.filename)))
        for name, data in (add or {}).items():
            dst.writestr(name, data)
    return out.getvalue()


class _Payload:
    """Unpickling this creates a folder: the marker of code run by a pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_loading_a_program_never_unpickles(tmp_path):
    """What torch.export.load reads, and that a crafted store cannot make it run code.

    A program grokscope writes holds raw tensor bytes (``use_pickle: false``, read with
    ``torch.as_strided``) and an empty example-inputs entry (no ``torch.load`` at all). A
    crafted one marking a weight ``use_pickle`` makes torch.export.load call
    ``torch.load(weights_only=False)``: shown here on a marker payload, then refused by
    grokscope before torch sees it.
    """
    raw = _program("sequential-mlp")
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    weights = json.loads(zipfile.ZipFile(io.BytesIO(raw)).read(
        next(n for n in names if n.endswith("model_weights_config.json"))))
    assert all(e["use_pickle"] is False for e in weights["config"].values())
    assert zipfile.ZipFile(io.BytesIO(raw)).getinfo(
        next(n for n in names if n.endswith("sample_inputs/model.pt"))).file_size == 0
    check_program(raw)  # what grokscope writes passes its own check

    marker = tmp_path / "pickle-ran"
    buf = io.BytesIO()
    torch.save(_Payload(str(marker)), buf)

    def pickled_weight(name, data):
        if name.endswith("model_weights_config.json"):
            doc = json.loads(data)
            first = next(iter(doc["config"].values()))
            first["use_pickle"] = True
            return json.dumps(doc).encode()
        if name.endswith("weights/weight_0"):
            return buf.getvalue()
        return data

    crafted = _program_zip(raw, pickled_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.export.load(io.BytesIO(crafted))
        except Exception:  # noqa: BLE001 - the payload is not a tensor; it ran already
            pass
    assert marker.exists(), "the crafted payload must be live for this test to mean anything"
    marker.rmdir()
    with pytest.raises(CorruptStoreError, match="pickled"):
        load_exported(crafted)
    assert not marker.exists()


def _graph_edit(mutate):
    def edit(name, data):
        if name.endswith("models/model.json"):
            doc = json.loads(data)
            mutate(doc)
            return json.dumps(doc).encode()
        return data
    return edit


CRAFTED = {
    "example-inputs": (lambda n, d: b"not empty" if n.endswith("sample_inputs/model.pt") else d,
                       "example inputs"),
    "extra-entry": (None, "unexpected archive entry"),
    "guard-code": (_graph_edit(lambda doc: doc.update(guards_code=["__import__('os')"])),
                   "guard code"),
    "shape-expression": (_graph_edit(lambda doc: doc["graph_module"]["graph"].update(
        sym_int_values={"s9": {"as_expr": {"expr_str": "eval(chr(49))", "hint": None}}})),
        "shape expression"),
    "target": (_graph_edit(lambda doc: doc["graph_module"]["graph"]["nodes"][0].update(
        target="builtins.exec")), "builtins.exec"),
    "file-op": (_graph_edit(lambda doc: doc["graph_module"]["graph"]["nodes"][0].update(
        target="torch.ops.aten.from_file.default")), "from_file"),
    "module-path": (_graph_edit(lambda doc: doc["graph_module"]["module_call_graph"][1].update(
        fqn="__class__")), "module path"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_programs_are_refused(case):
    raw = _program("sequential-mlp")
    edit, match = CRAFTED[case]
    if edit is None:
        crafted = _program_zip(raw, lambda n, d: d, add={"archive/extra/evil.py": b"print(1)"})
    else:
        crafted = _program_zip(raw, edit)
    with pytest.raises(CorruptStoreError, match=match):
        load_exported(crafted)


# --------------------------------------------------------------------------- fresh process
SCRIPT = '''
import sys
from pathlib import Path

import torch
from torch import nn

import grokscope as gs


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.hidden = nn.Linear(8, width)
        self.out = nn.Linear(width, 7)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.embed(x).flatten(1))))


def train_and_record(path, model, data, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with gs.Recorder(path, model, data, **kw) as rec:
        for step in range(6):
            loss = nn.functional.cross_entropy(model(data.x_train), data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rec.due(step):
                rec.record(step, metrics={"train_loss": loss.item()})
    with torch.no_grad():
        return model.eval()(data.x_test)


out = Path(sys.argv[1])
torch.manual_seed(0)
a = torch.randint(0, 7, (40, 2))
y = a.sum(1) % 7
tokens = gs.Data(a[:30], y[:30], a[30:], y[30:])
two_hot = torch.cat([nn.functional.one_hot(a[:, 0], 7), nn.functional.one_hot(a[:, 1], 7)], 1)
floats = gs.Data(two_hot[:30].float(), y[:30], two_hot[30:].float(), y[30:])
logits = {
    "net": train_and_record(out / "net.zarr", Net(width=16), tokens, model_kwargs={"width": 16}),
    "seq": train_and_record(out / "seq.zarr",
                            nn.Sequential(nn.Linear(14, 16), nn.ReLU(), nn.Linear(16, 7)), floats),
}
torch.save(logits, out / "logits.pt")
'''

CHECK = '''
import sys
import torch
import grokscope as gs

try:
    import script  # noqa: F401
    raise SystemExit("the training script must not be importable here")
except ModuleNotFoundError:
    pass
want = torch.load(sys.argv[1] + "/logits.pt", weights_only=True)
for name in ("net", "seq"):
    run = gs.open_run(sys.argv[1] + f"/{name}.zarr")
    assert run.model_source == "exported", run.model_source
    step = int(run.steps[-1])
    a, b = run.model_at(step), run.model_at(step)
    assert a is not b
    got = a(run.data.x_test)
    assert torch.equal(got, want[name]), (name, (got - want[name]).abs().max())
    assert torch.equal(b(run.data.x_test), want[name])
net = gs.open_run(sys.argv[1] + "/net.zarr")
assert net.config["model"] == {"factory": "__main__:Net", "kwargs": {"width": 16}}, net.config
print("fresh process OK")
'''


@pytest.mark.slow
def test_fresh_process_rebuilds_a_script_class_and_a_sequential(tmp_path):
    work, elsewhere, stores = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "stores"
    for d in (work, elsewhere, stores):
        d.mkdir()
    (work / "script.py").write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "script.py", str(stores)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.export" not in done.stderr  # both exported: no fallback warning
    check = subprocess.run([sys.executable, "-c", CHECK, str(stores)], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    assert "fresh process OK" in check.stdout
