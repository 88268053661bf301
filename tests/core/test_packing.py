"""Packed grids: runs share a GPU when their measured memory fits, and packing changes no result."""

from __future__ import annotations

import json
import random
import textwrap

import pytest
from ponderkit.app.cli import main
from ponderkit.lab import grid, packing
from ponderkit.lab.packing import CONTEXT_BYTES, MARGIN, GpuPacker, Slots

GiB = 2**30


def test_fixed_slots_are_taken_and_given_back():
    slots = Slots([{"OMP_NUM_THREADS": "2"}] * 3)
    placed = [slots.place(None) for _ in range(4)]
    assert placed[:3] == [(0, {"OMP_NUM_THREADS": "2"}), (1, {"OMP_NUM_THREADS": "2"}),
                          (2, {"OMP_NUM_THREADS": "2"})]  # fmt: skip
    assert placed[3] is None
    slots.release(1)
    assert slots.place(None) == (1, {"OMP_NUM_THREADS": "2"})


def test_cpu_grids_share_the_cores(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(grid.os, "cpu_count", lambda: 8)
    placer = grid.make_placer(3, [], [], {}, print)
    assert placer.envs == [{"OMP_NUM_THREADS": "2"}] * 3


@pytest.mark.parametrize("seed", range(20))
def test_packing_never_starts_a_run_that_does_not_fit(seed):
    """A simulated grid: runs of random sizes on GPUs of random free memory, finishing in
    random order; at every start, each GPU's placed needs stay within its free memory (a run
    too big to share runs alone on an idle GPU), at most ``jobs`` run, and every run runs."""
    rng = random.Random(seed)
    free = {str(g): rng.randint(4, 80) * GiB for g in range(rng.randint(1, 4))}
    jobs = rng.randint(1, 12)
    needs = [rng.randint(1, 90) * GiB for _ in range(rng.randint(1, 30))]
    packer = GpuPacker(free, jobs, need=lambda run: needs[run])
    pending, running, ran = list(range(len(needs))), [], []
    while pending or running:
        for run in list(pending):
            got = packer.place(run)
            if got is None:
                continue
            (gpu, need), env = got
            assert env == {"CUDA_VISIBLE_DEVICES": gpu} and need == needs[run]
            pending.remove(run)
            running.append((run, (gpu, need)))
            ran.append(run)
            on_gpu = [needs[r] for r, (g, _) in running if g == gpu]
            assert sum(on_gpu) <= free[gpu] or on_gpu == [needs[run]]  # fits, or alone
            assert len(running) <= jobs
        if running:  # one run finishes
            run, handle = running.pop(rng.randrange(len(running)))
            packer.release(handle)
    assert sorted(ran) == list(range(len(needs)))


def test_packing_fills_gpus_by_room():
    # two GPUs with 40 and 30 GiB free, runs of 12 GiB: most room first, 0 1 0 1, then 0 again
    # (16 GiB left there, 6 on GPU 1); a sixth fits nowhere (4 and 6 GiB) until one finishes
    packer = GpuPacker({"0": 40 * GiB, "1": 30 * GiB}, jobs=8, need=lambda run: 12 * GiB)
    assert [packer.place(i)[0][0] for i in range(5)] == ["0", "1", "0", "1", "0"]
    assert packer.place(5) is None
    packer.release(("1", 12 * GiB))
    assert packer.place(5)[0][0] == "1"
    # jobs bounds the runs at once, whatever fits
    small = GpuPacker({"0": 80 * GiB}, jobs=2, need=lambda run: GiB)
    assert small.place(0) and small.place(1) and small.place(2) is None


def test_cuda_grid_probes_each_config_once(monkeypatch, write, sort_yaml, registry):
    """On CUDA (simulated): every distinct config is probed once, before free memory is read,
    and the packer gets probe peak x margin + a CUDA context per run."""
    import torch
    from ponderkit.lab.ablation import load_ablation

    path = write("abl.yaml", "base: sort.yaml\nvariants: {wide: {model.d_model: 64}}\nseeds: 2\n")
    runs = load_ablation(path, registry=registry).runs()
    calls = []

    def probe(config, gpu, env, plugin_args=()):
        calls.append((config.model.d_model, gpu))
        return config.model.d_model * GiB // 16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(packing, "probe_peak_bytes", probe)
    monkeypatch.setattr(packing, "free_memory", lambda gpus: {g: 10 * GiB for g in gpus})
    placer = grid.make_placer(4, runs, ["python"], {}, lambda text: None)
    assert sorted(calls) == [(32, "3"), (64, "3")]  # 2 configs x 2 seeds: 2 probes
    assert placer.capacity == {"3": 10 * GiB, "5": 10 * GiB}
    need = {r.config.model.d_model: placer.need(r) for r in runs}
    assert need[64] == int(4 * GiB * MARGIN) + CONTEXT_BYTES


def test_memory_per_run_replaces_the_probes(write, sort_yaml, registry, monkeypatch):
    """``--memory-per-run`` (simulated CUDA): no probe runs, every run needs the given GiB,
    so 10 GiB free holds three runs of 3 GiB and not a fourth."""
    import torch
    from ponderkit.lab.ablation import load_ablation

    path = write("abl.yaml", "base: sort.yaml\nvariants: {wide: {model.d_model: 64}}\nseeds: 2\n")
    runs = load_ablation(path, registry=registry).runs()

    def probe(*args, **kwargs):
        raise AssertionError("probed although --memory-per-run was given")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(packing, "probe_peak_bytes", probe)
    monkeypatch.setattr(packing, "free_memory", lambda gpus: {g: 10 * GiB for g in gpus})
    placer = grid.make_placer(8, runs, ["python"], {}, lambda text: None, memory_per_run=3)
    placed = [placer.place(r) for r in runs]
    assert [p is not None for p in placed] == [True, True, True, False]
    assert placed[0][0] == ("0", 3 * GiB)


@pytest.mark.parametrize("value", ["0", "-2"])
def test_memory_per_run_must_be_positive(write, sort_yaml, capsys, value):
    path = write("abl.yaml", "base: sort.yaml\nvariants: {wide: {model.d_model: 64}}\n")
    assert main(["ablate", str(path), "--jobs", "2", "--memory-per-run", value]) == 2
    assert "--memory-per-run must be a positive number of GiB" in capsys.readouterr().err


def test_probes_run_concurrently_and_a_failed_one_is_repeated_alone(
    write, sort_yaml, registry, monkeypatch
):
    """Four distinct configs (x 2 seeds): 4 probes, concurrently; one that fails while others
    run is probed again alone, and its result is kept."""
    import threading
    import time

    from ponderkit.lab.ablation import load_ablation

    path = write(
        "abl.yaml",
        "base: sort.yaml\nvariants: {a: {model.d_model: 16}, b: {model.d_model: 48}, "
        "c: {model.d_model: 64}}\nseeds: 2\n",
    )
    runs = load_ablation(path, registry=registry).runs()
    lock, live, most, calls = threading.Lock(), [0], [0], []

    def probe(config, gpu, env, plugin_args=()):
        d = config.model.d_model
        with lock:
            calls.append(d)
            live[0] += 1
            most[0] = max(most[0], live[0])
            first_64 = calls.count(64) == 1
        time.sleep(0.3)
        with lock:
            live[0] -= 1
        if d == 64 and first_64:
            raise RuntimeError("memory probe failed (exit 1): CUDA out of memory")
        return d * GiB // 16

    monkeypatch.setattr(packing, "probe_peak_bytes", probe)
    probe_ = packing.MemoryProbe("0")
    probe_.probe_all(runs)
    assert sorted(calls) == [16, 32, 48, 64, 64]  # one probe per config, 64 twice
    assert most[0] == 4
    assert probe_(runs[-1]) == int(4 * GiB * MARGIN) + CONTEXT_BYTES  # d=64, cached


def test_a_probe_that_fails_alone_too_is_raised(write, sort_yaml, registry, monkeypatch):
    from ponderkit.lab.ablation import load_ablation

    path = write("abl.yaml", "base: sort.yaml\nvariants: {a: {model.d_model: 16}}\n")
    runs = load_ablation(path, registry=registry).runs()

    def probe(config, gpu, env, plugin_args=()):
        if config.model.d_model == 16:
            raise RuntimeError("memory probe failed (exit 1): broken")
        return GiB

    monkeypatch.setattr(packing, "probe_peak_bytes", probe)
    with pytest.raises(RuntimeError, match="broken"):
        packing.MemoryProbe("0").probe_all(runs)


def run_grid_with_jobs(write, sort_yaml, jobs: int, name: str):
    path = write(
        f"{name}.yaml",
        textwrap.dedent(
            """
            base: sort.yaml
            overrides: {train.threads: 1, train.log_every: 5, train.eval_every: 10}
            variants: {narrow: {model.d_model: 16}}
            seeds: [0, 1]
            budget: {steps: 10}
            """
        ),
    )
    out = path.parent / f"out_{name}"
    assert main(["ablate", str(path), "--out", str(out), "--jobs", str(jobs)]) == 0
    return out


def test_a_packed_grid_trains_what_one_at_a_time_trains(write, sort_yaml):
    from safetensors.torch import load_file

    one = run_grid_with_jobs(write, sort_yaml, 1, "one")
    two = run_grid_with_jobs(write, sort_yaml, 2, "two")
    timing = {"samples_per_s", "elapsed_s"}
    for run in ("base/seed0", "base/seed1", "narrow/seed0", "narrow/seed1"):
        a = load_file(one / run / "checkpoints/final/model.safetensors")
        b = load_file(two / run / "checkpoints/final/model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), run
        metrics = [
            [{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (out / run / "metrics.jsonl").read_text().splitlines()]
            for out in (one, two)
        ]  # fmt: skip
        assert metrics[0] == metrics[1], run
