"""Data-parallel training (torchrun, gloo on CPU) against the single-process run.

Every rank takes its shard of each global batch and gradients are averaged, so a run at
2 ranks must end with the weights of the run at 1 rank with the same global batch (to float
tolerance: only the order of summation differs). The experiment exercises what ranks must
keep identical: deep supervision's persistent batch (per rank, gathered in checkpoints),
a routed FFN whose dead-expert resets depend on activation counts summed over ranks, the
puzzle-embedding table's sparse sign-SGD, EMA, and evaluation split over the ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.contract.errors import InputError
from ponderkit.engine.distributed import Distributed
from safetensors.torch import load_file

EXPERIMENT = """
name: ddp_tiny
seed: 0
task:
  name: arc
  augmentations: 3
  canvas: 6
  eval_views: 4
  train_check_tasks: 2
  train_tasks: [3c9b0459, 6150a2bd]
  eval_tasks: [66e6c45b]
model:
  d_model: 16
  puzzle_emb_len: 2
  puzzle_emb_dim: 16
  recursion:
    name: trm
    layers: 1
    H_cycles: 2
    L_cycles: 1
    block:
      name: post_norm
      mixer: {name: attention, heads: 2}
      ffn:
        name: dynmoe
        experts: 32
        hidden: 16
        router: {name: cosine_threshold, fallback: topk, sdl_weight: 0.01}
  halting: {name: q_head, max_steps: 2, exploration: 0.0}
schedule: deep_supervision
optimizer: {lr: 3.0e-3, warmup_steps: 4}
callbacks:
  - {name: puzzle_emb_signsgd, lr: 0.01, weight_decay: 0.5}
  - {name: expert_reset, interval: 1}
  - {name: ema, decay: 0.9}
train: {steps: 20, batch_size: 8, log_every: 5, eval_every: 10, eval_batch_size: 16,
        threads: 1, checkpoint_every: 10}
"""
ATOL = 1e-5


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].shape == b[k].shape, f"{what}: {k}"
        diff = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        assert diff <= ATOL, f"{what}: {k} differs by {diff}"


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "lm_loss", "grad_norm", "experts_reset", "puzzle_emb_lr"):
            assert g[key] == pytest.approx(w[key], abs=ATOL), (g["step"], key)
        for key in ("eval/token_acc", "eval/exact_acc"):
            assert (key in g) == (key in w)
            if key in w:
                assert g[key] == pytest.approx(w[key], abs=ATOL), (g["step"], key)


def trainer_state(run: Path, checkpoint: str) -> dict:
    return torch.load(run / "checkpoints" / checkpoint / "trainer.pt", weights_only=True)


def flat(obj, prefix=""):
    """A nested dict/list of tensors as {dotted path: tensor}."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    out = {}
    for k, v in items:
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The experiment at 1 rank (in process) and at 2 ranks (torchrun, gloo)."""
    root = tmp_path_factory.mktemp("ddp")
    cache = root / "cache"
    exp = root / "ddp.yaml"
    exp.write_text(EXPERIMENT)
    old = os.environ.get("PONDERKIT_CACHE")
    os.environ["PONDERKIT_CACHE"] = str(cache)
    try:
        assert main(["run", str(exp), "--out", str(root / "one"), "--quiet"]) == 0
    finally:
        if old is None:
            del os.environ["PONDERKIT_CACHE"]
        else:
            os.environ["PONDERKIT_CACHE"] = old
    env = {**os.environ, "PONDERKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    # --standalone: a rendezvous on a free local port, so parallel test runs do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "ponderkit", "run", str(exp), "--out", str(root / "two"), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc.stdout


def test_two_ranks_train_as_one(runs):
    root, stdout = runs
    one, two = root / "one", root / "two"
    # rank 0 alone speaks and writes
    assert stdout.count("run directory:") == 1 and "2 ranks" in stdout
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    for name in ("model.safetensors",):  # evaluation (EMA) weights
        assert_same_tensors(
            load_file(one / "checkpoints/final" / name),
            load_file(two / "checkpoints/final" / name),
            name,
        )
    assert_same_tensors(
        trainer_state(one, "final")["train_weights"],
        trainer_state(two, "final")["train_weights"],
        "train weights",
    )
    got, want = records(two), records(one)
    assert_same_metrics(got, want)
    assert want[-1]["experts_reset"] > 0  # resets happened, decided alike on both ranks


def test_checkpoint_holds_the_global_persistent_batch(runs):
    """Deep supervision's carried batch is per rank in training and whole in the checkpoint:
    the 2-rank checkpoint holds the 1-rank run's batch of 8 slots, carry and halting state."""
    root, _ = runs
    one = trainer_state(root / "one", "step_0000010")
    two = trainer_state(root / "two", "step_0000010")
    assert two["samples"] == one["samples"] == 10 * 8
    assert two["schedule"]["batch"]["inputs"].shape[0] == 8
    assert_same_tensors(flat(one["schedule"]), flat(two["schedule"]), "schedule state")
    assert sorted(two["per_sample"]) == sorted(flat(two["schedule"]))


def test_resume_at_another_world_size_continues(runs, tmp_path, monkeypatch):
    """The 2-rank run stopped after its step-10 checkpoint, resumed in one process, ends
    where the 1-rank run ended."""
    root, _ = runs
    run = tmp_path / "resumed"
    shutil.copytree(root / "two", run)
    for later in ("final", "step_0000020"):
        shutil.rmtree(run / "checkpoints" / later)
    monkeypatch.setenv("PONDERKIT_CACHE", str(root / "cache"))
    exp = root / "ddp.yaml"
    assert main(["run", str(exp), "--out", str(run), "--resume", "--quiet"]) == 0
    assert_same_tensors(
        trainer_state(root / "one", "final")["train_weights"],
        trainer_state(run, "final")["train_weights"],
        "train weights after resume",
    )
    assert_same_metrics(records(run), records(root / "one"))


def test_batch_not_divisible_by_world_size_is_refused():
    with pytest.raises(InputError, match=r"train.batch_size=10 is not divisible by the world"):
        Distributed(rank=0, world_size=4).check_batch_size(10)
    Distributed(rank=1, world_size=2).check_batch_size(10)


def test_shards_and_samples_split_like_the_global_batch():
    """Rank r's shard is rows [r*b, (r+1)*b); saved per-sample state splits the same way and
    state that is not per sample is left whole."""
    batch = {"inputs": torch.arange(12).view(6, 2), "labels": torch.arange(6)}
    parts = [next(Distributed(r, 3).shard(iter([batch]))) for r in range(3)]
    assert torch.equal(torch.cat([p["inputs"] for p in parts]), batch["inputs"])
    assert parts[1]["labels"].tolist() == [2, 3]
    state = {"carry": {"z": torch.arange(6.0)}, "generator": torch.arange(5)}
    mine = Distributed(2, 3).split_samples(state, ["carry.z"], global_batch=6)
    assert mine["carry"]["z"].tolist() == [4.0, 5.0]
    assert torch.equal(mine["generator"], state["generator"])
    local, paths = Distributed().gather_samples(state, local_batch=6)
    assert paths == ["carry.z"] and local["generator"] is state["generator"]


def test_ablate_nproc_launches_each_run_through_torchrun(monkeypatch):
    """`ablate --nproc K`: a run's worker is `python -P -m torch.distributed.run --standalone
    --nproc_per_node K -m ponderkit ...`, with K GPUs of its own (or a share of the cores)."""
    import torch
    from ponderkit.lab import grid

    worker = grid.worker_command(Path("abl.yaml"), Path("out"), [])
    command = grid.distributed_command(worker, 2)
    assert command[:3] == [sys.executable, "-P", "-m"]
    assert command[3:8] == ["torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert command[8:] == worker[3:]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 5)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = [env["CUDA_VISIBLE_DEVICES"] for _, env in grid._device_slots(8, nproc=2)]
    assert slots == ["0,1", "2,3"]  # whole groups only, never more jobs than groups
    with pytest.raises(InputError, match="needs 8 GPUs and 5 are visible"):
        grid._device_slots(1, nproc=8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(grid.os, "cpu_count", lambda: 8)
    assert [env for _, env in grid._device_slots(2, nproc=2)] == [{"OMP_NUM_THREADS": "2"}] * 2


def test_ablate_nproc_refuses_a_batch_it_cannot_split(write, sort_yaml, capsys):
    path = write("abl.yaml", "base: sort.yaml\nvariants: {base: {}}\nbudget: {steps: 4}\n")
    assert main(["ablate", str(path), "--out", str(path.parent / "out"), "--nproc", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --nproc 3: variant base has train.batch_size=64, not divisible by 3"]
    assert not (path.parent / "out").exists()
