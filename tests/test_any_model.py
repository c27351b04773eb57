"""Any run, any model: researcher-style models recorded or imported, analysed with every measure
by a process that has none of their code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _zoo import KINDS, RawTransformer, build, data_for, record
from _zoo import last_logits as _last_logits
from torch import nn

import grokscope as gs
from grokscope.measures import names as measure_names

ALL = set(measure_names())


def _train_and_record(path, kind, steps=(0, 3, 8), p=11):
    return record(path, kind, steps=steps, p=p)


@pytest.mark.parametrize("kind", KINDS)
def test_every_measure_runs_on_every_model_without_its_code(tmp_path, kind):
    path = tmp_path / f"{kind}.zarr"
    _train_and_record(path, kind)
    run = gs.open_run(path)  # no model, no trust: the store carries the architecture
    res = gs.analyze(run, progress=False, num_threads=1)
    assert dict(res.skipped) == {}, res.skipped
    assert set(res) == ALL
    # curves' accuracies are the model's own, read at the last position for transformers
    last = int(run.steps[-1])
    model = run.model_at(last)
    for split in ("train", "test"):
        x, y = run.data.split(split)
        with torch.no_grad():
            acc = float((_last_logits(model, x)[:, : run.data.n_classes].argmax(1) == y).double().mean())
        assert float(res["curves"][f"{split}_acc"].sel(step=last)) == pytest.approx(acc, abs=1e-12)
    for name in ("alignment", "nfa", "lmn", "kernel", "rqi"):
        ds = res[name]
        finite = [v for v in ds.data_vars if ds[v].dtype.kind == "f" and np.isfinite(ds[v].values).any()]
        assert finite, f"{name} has no finite output on {kind}"


_SCRIPT = """
import torch, torch.nn.functional as F
from torch import nn
import grokscope as gs

class Net(nn.Module):
    def __init__(self, p, width=48):
        super().__init__()
        self.emb = nn.Embedding(p + 1, 8)
        self.fc = nn.Linear(24, width)
        self.readout = nn.Linear(width, p)

    def forward(self, tokens):
        return self.readout(F.relu(self.fc(self.emb(tokens).flatten(1))))

torch.manual_seed(0)
p = 11
data = gs.make_task("modular", p=p, train_frac=0.5, encoding="tokens")
for name, model, kwargs in (
    ("net", Net(p, width=48), {"p": p, "width": 48}),
    ("seq", nn.Sequential(nn.Embedding(p + 1, 8), nn.Flatten(), nn.Linear(24, 32), nn.ReLU(),
                          nn.Linear(32, p)), None),
):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0)
    with gs.Recorder(f"{name}.zarr", model, data, model_kwargs=kwargs) as rec:
        for step in range(6):
            loss = F.cross_entropy(model(data.x_train), data.y_train)
            opt.zero_grad(); loss.backward(); opt.step()
            if step in (0, 2, 5):
                rec.record(step, model, {"train_loss": loss.item()})
    with torch.no_grad():
        torch.save(model(data.x_test), f"{name}_logits.pt")
"""


def test_fresh_process_analyses_a_script_model(tmp_path):
    """A class defined in a training script (``__main__:Net``) and an nn.Sequential: another
    process in another folder, with none of the script importable, rebuilds both (logits equal)
    and runs every measure from Python and from ``grokscope analyze``."""
    work, other = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    other.mkdir()
    (work / "train_script.py").write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "train_script.py"], cwd=work, env=env, check=True,
                   capture_output=True, timeout=300)
    check = textwrap.dedent(f"""
        import json, sys, torch
        import grokscope as gs
        out = {{}}
        for name in ("net", "seq"):
            path = {str(work)!r} + f"/{{name}}.zarr"
            run = gs.open_run(path)
            model = run.model_at(int(run.steps[-1]))
            with torch.no_grad():
                same = torch.equal(model(run.data.x_test), torch.load({str(work)!r} + f"/{{name}}_logits.pt"))
            out[name] = {{"same": same, "source": run.model_source}}
        res = gs.analyze({str(work)!r} + "/net.zarr", progress=False, num_threads=1)
        out["net"].update(measures=sorted(res), skipped=res.skipped)
        from grokscope.cli import main  # the `grokscope analyze` command, in this process
        out["cli"] = main(["analyze", {str(work)!r} + "/seq.zarr", "-q", "--threads", "1"])
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", check], cwd=other, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("net", "seq"):
        assert out[name]["same"], name
        assert out[name]["source"] == "exported"
    assert out["net"]["skipped"] == {}, out["net"]
    assert set(out["net"]["measures"]) == ALL
    assert out["cli"] == 0
    assert "skipped: none" in proc.stdout and f"{len(ALL)} measures" in proc.stdout


def test_imported_raw_transformer_from_epoch_files(tmp_path):
    """The canonical research layout: a raw-parameter einsum transformer saved as per-epoch
    .pth files, imported and analysed with every measure; accuracies equal the user's own."""
    p = 11
    torch.manual_seed(0)
    model, data = RawTransformer(p), data_for("raw_transformer", p=p)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0)
    src = tmp_path / "ckpts"
    src.mkdir()
    own = {}
    for epoch in range(61):
        if epoch % 20 == 0:
            torch.save({"model": model.state_dict(), "epoch": epoch}, src / f"epoch_{epoch}.pth")
            with torch.no_grad():
                own[epoch] = [float((model(x)[:, -1].argmax(1) == y).double().mean())
                              for x, y in (data.split("train"), data.split("test"))]
        loss = F.cross_entropy(model(data.x_train)[:, -1], data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    run = gs.import_checkpoints(src, tmp_path / "imported.zarr", model=RawTransformer(p), data=data)
    assert run.steps.tolist() == [0, 20, 40, 60]
    fresh = gs.open_run(tmp_path / "imported.zarr")  # no model: the exported program
    res = gs.analyze(fresh, progress=False, num_threads=1)
    assert dict(res.skipped) == {}
    assert set(res) == ALL
    cur = res["curves"]
    for epoch, (tr, te) in own.items():
        assert float(cur.train_acc.sel(step=epoch)) == pytest.approx(tr, abs=1e-12)
        assert float(cur.test_acc.sel(step=epoch)) == pytest.approx(te, abs=1e-12)
    from grokscope.measures.phases import phase_summary

    steps = np.array(sorted(own))
    want = phase_summary(steps, np.array([own[s][0] for s in steps]),
                         np.array([own[s][1] for s in steps]))
    assert str(res["phases"].label.values) == want["label"]


def test_model_argument_is_never_mutated(tmp_path):
    path = tmp_path / "r.zarr"
    model, _ = _train_and_record(path, "seq_mlp")
    mine = build("seq_mlp")
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    run = gs.open_run(path, model=mine)
    a, b = run.model_at(0), run.model_at(int(run.steps[-1]))
    assert a is not b and a is not mine and b is not mine
    assert all(torch.equal(v, before[k]) for k, v in mine.state_dict().items())
    assert not torch.equal(a[0].weight, b[0].weight)
    gs.analyze(path, ["curves"], model=mine, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in mine.state_dict().items())


def test_anatomy_override_reaches_the_measures(tmp_path):
    path = tmp_path / "r.zarr"
    model, data = _train_and_record(path, "raw_transformer")
    # read the logits at the first position instead of the detected last one
    res = gs.analyze(path, ["curves"], anatomy={"output": {"position": 0}}, progress=False)
    with torch.no_grad():
        want = float((model(data.x_train)[:, 0].argmax(1) == data.y_train).double().mean())
    assert float(res["curves"].train_acc.isel(step=-1)) == pytest.approx(want, abs=1e-12)
    with pytest.raises(gs.GrokscopeError, match="'hidden' names module 'no.such'"):
        gs.analyze(path, ["fourier"], anatomy={"hidden": ["no.such"]}, progress=False)


def test_cli_model_option_with_a_file_class(tmp_path, capsys):
    """``--model path/to/file.py:Class --model-kwargs JSON`` names the user's own code."""
    path = tmp_path / "r.zarr"
    _train_and_record(path, "named_mlp")
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from torch import nn
        import torch.nn.functional as F

        class NamedMLP(nn.Module):
            def __init__(self, d_in, width, n_out):
                super().__init__()
                self.fc_in = nn.Linear(d_in, width)
                self.fc_mid = nn.Linear(width, width)
                self.head = nn.Linear(width, n_out)

            def forward(self, x):
                return self.head(F.silu(self.fc_mid(F.silu(self.fc_in(x)))))
    """))
    from grokscope.cli import main

    code = main(["analyze", str(path), "-q", "-m", "curves", "--model",
                 f"{tmp_path / 'mynets.py'}:NamedMLP", "--model-kwargs",
                 json.dumps({"d_in": 22, "width": 40, "n_out": 11})])
    assert code == 0
    capsys.readouterr()
    assert main(["info", str(path), "--model", f"{tmp_path / 'mynets.py'}:NamedMLP",
                 "--model-kwargs", '{"d_in": 22, "width": 40, "n_out": 11}']) == 0
    out = capsys.readouterr().out
    assert "hidden:      fc_in (silu; input of 'fc_mid')" in out
    main(["info", str(path), "--model", f"{tmp_path / 'mynets.py'}:NamedMLP",
          "--model-kwargs", '{"d_in": 22, "width": 40, "n_out": 3}'])
    out = capsys.readouterr().out
    assert "anatomy: unavailable" in out and "head.weight" in out  # the mismatch is named


def test_constant_nonfinite_buffer_is_not_a_nonfinite_weight(tmp_path):
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(22, 11)
            self.register_buffer("IGNORE", torch.tensor(float("-inf")))

        def forward(self, x):
            return self.fc(x)

    import warnings

    data = data_for("seq_mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with gs.Recorder(tmp_path / "m.zarr", Masked(), data) as rec:
            rec.record(0)
    run = gs.open_run(tmp_path / "m.zarr")
    assert int(run.metrics["nonfinite"].values[0]) == 0
