"""``train.nonfinite`` without a host sync a step: the deferred path against the per-step one.

With an optimizer that skips a step on device when handed ``found_inf`` (torch's fused
AdamW, which the ``adamw`` plugin builds on CUDA), the trainer counts non-finite steps on the
device and reads the count only where it syncs anyway. These tests take torch's fused AdamW on
CPU (its CPU kernel honours ``found_inf`` as the CUDA one does) and hold the deferred path to
the contract of the per-step one, which serves as the reference (same fused optimizer, the
step simply not taken): bit-identical weights and moments, the same step named, the same
count, the same checkpoints and metrics, nothing written after a step that stops the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.contract.errors import NonFinite
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine import train as train_module
from ponderkit.engine.train import NonFiniteTally, Trainer, defers_nonfinite
from ponderkit.plugins.optimizers import adamw as adamw_module
from ponderkit.plugins.optimizers.adam_atan2 import AdamATan2
from ponderkit.plugins.optimizers.lion import Lion
from safetensors.torch import load_file

EXPERIMENT = """\
name: tiny
seed: 0
task: {name: sort, length: 6, values: 8, eval_size: 64}
model:
  d_model: 16
  recursion:
    name: stacked
    layers: 1
    block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: {name: swiglu, expansion: 2}}
optimizer: {lr: 1.0e-2, grad_clip: 1.0}
train: {steps: 8, batch_size: 8, log_every: 4, eval_every: 0, threads: 1, flops_every: 0}
callbacks: [ema]
"""


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    return tmp_path


@pytest.fixture
def fused(monkeypatch):
    """``path(deferred)``: AdamW takes torch's fused kernel (on CPU here); ``deferred`` False
    keeps the per-step host check with it (the reference)."""

    def path(deferred: bool) -> None:
        monkeypatch.setattr(adamw_module, "fused_kernel", lambda params: True)
        real = defers_nonfinite
        monkeypatch.setattr(
            train_module,
            "defers_nonfinite",
            (lambda opt, owned: real(opt, owned)) if deferred else (lambda opt, owned: False),
        )

    return path


def poison(monkeypatch, steps: dict[int, str]) -> None:
    """Make the loss (``loss``) or only the gradient (``grad``) non-finite at each step."""
    real = Trainer.optimize

    def optimize(self, loss):
        how = steps.get(self.step + 1)
        if how == "loss":
            loss = loss * float("nan")
        elif how == "grad":  # d sqrt(x)/dx at 0 is inf, times 0: a nan gradient, finite loss
            p = next(self.model.parameters())
            loss = loss + torch.sqrt(p.sum() * 0.0)
        elif how == "inf":
            loss = loss * float("inf")
        return real(self, loss)

    monkeypatch.setattr(Trainer, "optimize", optimize)


def trainer(here: Path, registry, *overrides: str) -> Trainer:
    cfg = load_experiment(here / "exp.yaml", list(overrides), registry=registry).config
    return Trainer(cfg, registry, quiet=True)


def state_of(t: Trainer) -> dict[str, torch.Tensor]:
    """Weights, AdamW's moments and step counts, and the EMA's shadow weights."""
    out = {f"w/{k}": v.detach().clone() for k, v in t.model.state_dict().items()}
    for i, (p, s) in enumerate(t.optimizer.state.items()):
        assert p.is_floating_point()
        for k, v in s.items():
            out[f"opt/{i}/{k}"] = v.detach().clone()
    for cb in t.callbacks:
        for i, v in enumerate(getattr(cb, "shadow", [])):
            out[f"ema/{i}"] = v.detach().clone()
    return out


def assert_identical(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"  # none before the first logged step
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def checkpoints(run: Path) -> list[str]:
    folder = run / "checkpoints"  # none before the first checkpoint
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


TIMING = {"samples_per_s", "elapsed_s"}


def untimed(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rs]


# -- which optimizers take it -----------------------------------------------------------------
def test_only_an_optimizer_that_skips_on_device_defers(here, registry, fused):
    p = torch.nn.Parameter(torch.ones(3))
    assert defers_nonfinite(torch.optim.AdamW([p], fused=True), [])
    assert not defers_nonfinite(torch.optim.AdamW([p]), [])  # CPU's default: for-each
    assert not defers_nonfinite(torch.optim.AdamW([p], fused=True), [p])  # a callback's own
    assert not defers_nonfinite(Lion([p], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0), [])
    assert not defers_nonfinite(AdamATan2([p], 1e-3, (0.9, 0.95), 0.0), [])
    assert trainer(here, registry).nonfinite_tally is None  # adamw on CPU: per-step check
    fused(True)
    t = trainer(here, registry)
    assert t.optimizer.param_groups[0]["fused"] and t.nonfinite_tally is not None


def test_the_tally_keeps_the_first_step_and_counts_afresh():
    tally = NonFiniteTally(torch.device("cpu"))
    no, yes = torch.tensor(False), torch.tensor(True)
    tally.record(no, 1, no, torch.tensor(1.0))
    assert tally.read() is None
    tally.record(yes, 2, no, torch.tensor(float("inf")))  # the gradient norm
    tally.record(yes, 3, yes, torch.tensor(float("nan")))
    tally.record(no, 4, no, torch.tensor(2.0))
    assert tally.read() == (2, 2, "gradient norm", float("inf"))
    assert tally.read() is None
    tally.record(yes, 5, yes, torch.tensor(float("nan")))
    count, step, what, value = tally.read()
    assert (count, step, what) == (1, 5, "loss") and value != value


# -- skip: the same run as one that never took the step -----------------------------------------
@pytest.mark.parametrize("bad", [{3: "loss"}, {3: "grad"}, {2: "inf", 5: "loss", 6: "grad"}])
def test_skip_ends_bit_identical_to_the_per_step_path(here, registry, fused, monkeypatch, bad):
    poison(monkeypatch, bad)
    runs = {}
    for deferred in (False, True):
        fused(deferred)
        t = trainer(here, registry, "train.nonfinite=skip")
        assert (t.nonfinite_tally is not None) == deferred
        t.fit()
        runs[deferred] = t
    assert_identical(state_of(runs[True]), state_of(runs[False]))
    assert runs[True].nonfinite_skipped == runs[False].nonfinite_skipped == len(bad)
    # every parameter took one optimizer step per finite step, no more
    steps = {float(s["step"]) for s in runs[True].optimizer.state.values()}
    assert steps == {8.0 - len(bad)}


def test_skip_leaves_weights_and_moments_as_they_were(here, registry, fused, monkeypatch):
    """Independently of the per-step path: across the skipped step neither the weights nor
    AdamW's moments and step counts move."""
    fused(True)
    t = trainer(here, registry, "train.nonfinite=skip", "train.steps=4")
    seen = {}
    real = Trainer.optimize

    def optimize(self, loss):
        if self.step + 1 == 3:
            seen["before"] = state_of(self)
            loss = loss * float("nan")
        out = real(self, loss)
        if self.step + 1 == 3:
            seen["after"] = state_of(self)
        return out

    monkeypatch.setattr(Trainer, "optimize", optimize)
    t.fit()
    before, after = seen["before"], seen["after"]
    assert_identical({k: v for k, v in after.items() if not k.startswith("ema/")},
                     {k: v for k, v in before.items() if not k.startswith("ema/")})  # fmt: skip
    assert t.nonfinite_skipped == 1


def test_skip_warns_once_and_counts_in_metrics_and_checkpoints(here, fused, monkeypatch,
                                                               capsys):  # fmt: skip
    poison(monkeypatch, {3: "loss", 5: "grad"})
    argv = ["run", "exp.yaml", "train.nonfinite=skip", "train.log_every=2",
            "train.checkpoint_every=3", "train.keep_checkpoints=10"]  # fmt: skip
    outcome = {}
    for deferred in (False, True):
        fused(deferred)
        out = f"r{int(deferred)}"
        assert main([*argv, "--out", out]) == 0
        err = capsys.readouterr().err
        warnings = [x for x in err.splitlines() if x.startswith("warning: non-finite")]
        outcome[deferred] = (out, warnings)
    (ref, ref_warn), (got, got_warn) = outcome[False], outcome[True]
    assert (
        got_warn
        == ref_warn
        == [
            "warning: non-finite loss (nan) at step 3: step skipped (train.nonfinite: skip; "
            "counted as nonfinite_skipped)"
        ]
    )
    assert [r["nonfinite_skipped"] for r in records(here / got)] == [0, 1, 2, 2]
    assert untimed(records(here / got)) == untimed(records(here / ref))
    names = checkpoints(here / got)
    assert names == checkpoints(here / ref)
    assert names == ["final", "step_0000003", "step_0000006"]
    for name, skipped in [("step_0000003", 1), ("step_0000006", 2), ("final", 2)]:
        # the count settled before the checkpoint (step 3 is no logged step)
        state = torch.load(here / got / "checkpoints" / name / "trainer.pt", weights_only=True)
        assert state["nonfinite_skipped"] == skipped
        for kind in ("model.safetensors",):
            a = load_file(str(here / got / "checkpoints" / name / kind))
            b = load_file(str(here / ref / "checkpoints" / name / kind))
            assert_identical(a, b)


# -- stop: the step named, nothing written after it ---------------------------------------------
@pytest.mark.parametrize(
    ("bad", "what", "overrides"),
    [
        ({3: "loss"}, "loss (nan)", []),  # read when step 4 is logged
        ({3: "grad"}, "gradient norm (nan)", ["train.checkpoint_every=1"]),  # at step 3's
        ({5: "loss", 6: "grad"}, "loss (nan)", ["train.log_every=100"]),  # at step 6's
        ({7: "inf"}, "loss (inf)", ["train.log_every=100", "train.checkpoint_every=100"]),
    ],
)
def test_stop_names_the_first_step_and_keeps_the_last_finite_checkpoint(
    here, fused, monkeypatch, capsys, bad, what, overrides
):
    poison(monkeypatch, bad)
    first = min(bad)
    argv = ["run", "exp.yaml", "--quiet", "train.checkpoint_every=2",
            "train.keep_checkpoints=10", *overrides]  # fmt: skip
    outcome = {}
    for deferred in (False, True):
        fused(deferred)
        out = f"r{int(deferred)}"
        assert main([*argv, "--out", out]) == 3
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        outcome[deferred] = (out, lines[0])
    (ref, ref_line), (got, got_line) = outcome[False], outcome[True]
    assert got_line == ref_line.replace(ref, got)
    assert f"non-finite {what} at step {first}: the run stopped before updating" in got_line
    names = checkpoints(here / got)
    assert names == checkpoints(here / ref)
    assert all(int(n.removeprefix("step_")) < first for n in names)  # none after the bad step
    if names:
        assert f"its last checkpoint, {names[-1]}, is kept" in got_line
        for name in names:
            a = load_file(str(here / got / "checkpoints" / name / "model.safetensors"))
            b = load_file(str(here / ref / "checkpoints" / name / "model.safetensors"))
            assert_identical(a, b)
    else:
        assert "no checkpoint" in got_line
    assert untimed(records(here / got)) == untimed(records(here / ref))
    assert all(r["step"] < first for r in records(here / got))


@pytest.mark.parametrize("first", [1, 3])
def test_stop_leaves_the_weights_of_the_step_before(here, registry, fused, monkeypatch, first):
    """Steps after the bad one are skipped too: the run stops, read only at its end, with the
    weights and moments the per-step path stops with (those of step ``first - 1``)."""
    poison(monkeypatch, {first: "loss"})
    real = Trainer._settle_nonfinite
    reads = []

    def settle(self):
        reads.append(self.step)
        return real(self)

    monkeypatch.setattr(Trainer, "_settle_nonfinite", settle)
    stopped = {}
    for deferred in (False, True):
        fused(deferred)
        t = trainer(here, registry, "train.log_every=100")
        reads.clear()
        with pytest.raises(NonFinite, match=f"non-finite loss \\(nan\\) at step {first}: "):
            t.fit()
        stopped[deferred] = (t, list(reads))
    (ref, _), (t, read_at) = stopped[False], stopped[True]
    assert ref.step == first - 1  # the per-step path stopped inside the bad step
    assert t.step == 8 and read_at == [8]  # read once, at the end of the loop
    got, want = state_of(t), state_of(ref)
    # the EMA went on averaging the (unchanged) weights after the bad step: in memory only
    got = {k: v for k, v in got.items() if not k.startswith("ema/")}
    want = {k: v for k, v in want.items() if not k.startswith("ema/")}
    if first == 1:  # no step taken: fused AdamW's state was made, zeros at step 0
        assert all(not v.any() for k, v in got.items() if k.startswith("opt/"))
        got = {k: v for k, v in got.items() if not k.startswith("opt/")}
    assert_identical(got, want)


def test_the_deferred_step_reads_nothing_on_the_host(here, registry, fused, monkeypatch):
    """No ``bool``/``int``/``float``/``item`` of a tensor inside ``optimize`` (on CUDA each
    is a host sync); the per-step path reads one."""
    reads = []
    real_bool = torch.Tensor.__bool__

    def counting_bool(self):
        reads.append("bool")
        return real_bool(self)

    for deferred in (True, False):
        fused(deferred)
        t = trainer(here, registry, "train.steps=2")
        real = Trainer.optimize

        def optimize(self, loss, real=real):
            with monkeypatch.context() as m:
                m.setattr(torch.Tensor, "__bool__", counting_bool)
                m.setattr(torch.Tensor, "item", lambda *a: reads.append("item"))
                m.setattr(torch.Tensor, "__float__", lambda *a: reads.append("float"))
                m.setattr(torch.Tensor, "__int__", lambda *a: reads.append("int"))
                return real(self, loss)

        monkeypatch.setattr(Trainer, "optimize", optimize)
        reads.clear()
        t.fit()
        monkeypatch.setattr(Trainer, "optimize", real)
        assert (reads == []) if deferred else (reads.count("bool") >= 2), (deferred, reads)


# -- ranks decide alike -------------------------------------------------------------------------
RANKS = """\
import sys

import torch
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine import distributed
from ponderkit.engine.train import Trainer
from ponderkit.plugins.optimizers import adamw

adamw.fused_kernel = lambda params: True
exp, out = sys.argv[1:3]
real = Trainer.optimize


def optimize(self, loss):
    if self.step + 1 == 3 and self.dist.rank == self.dist.world_size - 1:
        loss = loss + float("nan")  # this rank's loss alone: every gradient stays finite
    return real(self, loss)


Trainer.optimize = optimize
registry = Plugins(autoload=False).registry
with distributed.init_from_env("cpu") as dist:
    cfg = load_experiment(exp, ["train.nonfinite=skip"], registry=registry).config
    t = Trainer(cfg, registry, quiet=True)
    assert t.nonfinite_tally is not None
    t.fit()
    state = {"skipped": t.nonfinite_skipped, "weights": t.model.state_dict()}
    torch.save(state, f"{out}/rank{dist.rank}.pt")
"""


def test_every_rank_skips_a_step_one_rank_found_non_finite(here, registry, fused, monkeypatch):
    """Rank 1's loss alone is nan (the averaged gradients are finite): both ranks skip the
    step, through an all-reduce of the device flag, and end as the single process does."""
    import os
    import subprocess
    import sys

    (here / "ranks.py").write_text(RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "ranks.py", "exp.yaml", str(here)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [torch.load(here / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["skipped"] for r in ranks] == [1, 1]
    assert_identical(ranks[0]["weights"], ranks[1]["weights"])
    real = Trainer.optimize
    monkeypatch.setattr(
        Trainer,
        "optimize",
        lambda self, loss: real(self, loss + float("nan") if self.step + 1 == 3 else loss),
    )
    fused(True)
    one = trainer(here, registry, "train.nonfinite=skip")
    one.fit()
    assert one.nonfinite_skipped == 1
    for k, v in one.model.state_dict().items():  # only the order of summation differs
        assert torch.allclose(ranks[0]["weights"][k], v, atol=1e-5, rtol=0), k
