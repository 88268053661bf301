"""A run's lifecycle: resume by folder, extend a finished run, --version, and inspecting a run
without its optional loggers installed; the W&B and TensorBoard loggers."""

from __future__ import annotations

import json
import math
import sys
import time

import pytest
import yaml
from ponderkit.app.cli import main
from ponderkit.engine.train import lr_factor


def records(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def short_run(sort_yaml, tmp_path, capsys):
    """A finished 6-step run with cosine decay (no warmup), logged every step."""
    run = tmp_path / "run"
    args = ["run", str(sort_yaml), "--out", str(run), "--quiet", "train.steps=6",
            "train.log_every=1", "train.eval_every=0", "train.threads=1",
            "optimizer.decay=cosine", "optimizer.warmup_steps=0", "train.flops_every=0"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    return run


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ponderkit {version('ponderkit')}"


def test_resume_by_folder_of_a_finished_run_does_nothing(short_run, capsys):
    assert main(["run", "--resume", str(short_run)]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out


def test_extend_continues_a_finished_run_on_the_new_schedule(short_run, capsys):
    """6 steps extended to 10: steps 7..10 are logged once each, the config says 10, and the
    learning rate follows the 10-step cosine from step 6 on (lr_factor, by hand below)."""
    before = records(short_run)
    assert main(["run", "--resume", str(short_run), "--extend", "train.steps=10", "--quiet"]) == 0
    after = records(short_run)
    steps = [r["step"] for r in after if "loss" in r]
    assert steps == list(range(1, 11))
    assert after[: len(before)] == before  # the first segment's records are kept as they were
    saved = yaml.safe_load((short_run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 10
    (ext,) = json.loads((short_run / "extensions.json").read_text())
    assert ext["train.steps"] == {"from": 6, "to": 10} and ext["at_step"] == 6
    # the lr logged after step k is set for step k: base * cosine over 10 steps, min ratio 0.1
    base = yaml.safe_load((short_run / "config.yaml").read_text())["optimizer"]["lr"]
    for r in after:
        if "lr" in r and r["step"] > 6:
            k = r["step"]
            want = base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, k / 10))))
            assert r["lr"] == pytest.approx(want, rel=1e-9)
    # step 6, the old end, was logged at the old schedule's floor
    (six,) = [r for r in after if r.get("step") == 6 and "lr" in r]
    assert six["lr"] == pytest.approx(base * 0.1, rel=1e-9)
    capsys.readouterr()
    # and the extended run is an ordinary finished run again
    assert main(["run", "--resume", str(short_run)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_lr_factor_matches_the_documented_jump():
    """docs/runs-lifecycle.md: 1000 -> 2000 steps without warmup, cosine, min ratio 0.1: the
    rate at step 1000 goes from 0.1 x lr to 0.55 x lr."""
    from ponderkit.contract.experiment import OptimizerConfig

    cfg = getattr(OptimizerConfig, "__attrs_attrs__", None) and OptimizerConfig(decay="cosine")
    assert lr_factor(1000, 1000, cfg) == pytest.approx(0.1)
    assert lr_factor(1000, 2000, cfg) == pytest.approx(0.55)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--extend", "train.steps=4"], "must be more than the run's 6"),
        (["--extend", "train.epochs=3"], "the run has no train.epochs to raise"),
        (["--extend", "model.d_model=8"], "expected KEY=VALUE with KEY one of train.steps"),
        (["--extend", "train.steps=lots"], "expected a number"),
        (["model.d_model=8"], "reads the run's own config.yaml; drop 'model.d_model=8'"),
    ],
)
def test_bad_resume_or_extend_is_one_line_exit_2(short_run, capsys, extra, message):
    before = (short_run / "metrics.jsonl").read_text()
    assert main(["run", "--resume", str(short_run), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert (short_run / "metrics.jsonl").read_text() == before


def test_resume_of_no_run_directory(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory (no config.yaml)" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_a_run_with_loggers_is_inspected_without_them(short_run, monkeypatch, capsys, tmp_path):
    """config, diff and eval of a run whose config names callback/tensorboard and callback/wandb
    while neither package can be imported; training it refuses in one line."""
    path = short_run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["callbacks"] = [{"name": "tensorboard"}, {"name": "wandb", "mode": "offline"}]
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError):
        import tensorboard  # noqa: F401
    assert main(["config", str(short_run)]) == 0
    assert "name: tensorboard" in capsys.readouterr().out
    assert main(["diff", str(short_run), str(short_run)]) == 0
    assert main(["eval", str(short_run)]) == 0
    assert "exact_acc=" in capsys.readouterr().out
    assert main(["run", "--resume", str(short_run), "--extend", "train.steps=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "callbacks.0" in err[0]
    assert (
        "the tensorboard package is not installed: pip install 'ponderkit[tensorboard]'" in err[0]
    )


def test_wandb_offline_logs_the_records(sort_yaml, tmp_path, capsys, monkeypatch):
    """With the real wandb package, offline: the W&B run's history holds metrics.jsonl's."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing in ~
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    run = tmp_path / "run"
    args = ["run", str(sort_yaml), "--out", str(run), "--quiet", "train.steps=4",
            "train.log_every=2", "train.eval_every=0", "train.threads=1", "train.flops_every=0",
            "callbacks=[{name: wandb, mode: offline, project: test}]"]  # fmt: skip
    assert main(args) == 0
    wandb.teardown()  # W&B's service writes its log out when it stops (at exit otherwise)
    capsys.readouterr()
    run_id = (run / "wandb_id.txt").read_text().strip()
    (folder,) = (run / "wandb").glob(f"offline-run-*-{run_id}")
    logged = {r["step"]: r["loss"] for r in records(run) if "loss" in r}
    assert logged.keys() == {2, 4}
    # the logger finished the W&B run at the last record; W&B's service writes the log after
    deadline = time.monotonic() + 10
    while "exit" not in (seen := _wandb_history(folder / f"run-{run_id}.wandb")):
        assert time.monotonic() < deadline, "W&B wrote no exit record in 10 s"
        time.sleep(0.1)
    seen.pop("exit")
    assert {s: h["loss"] for s, h in seen.items() if "loss" in h} == pytest.approx(logged)


def _wandb_history(path) -> dict:
    """step -> logged values, read from a W&B transaction log: a 7-byte header (``:W&B``,
    0xBEE1, version 1), then LevelDB-log blocks of 32 KiB whose chunks (crc32 uint32, length
    uint16, type: 1 full, 2 first, 3 middle, 4 last) hold ``Record`` protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out: dict[int, dict] = {}
    pos, pending, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):
            continue
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(pending)
        if rec.WhichOneof("record_type") == "exit":
            out["exit"] = {}
        if rec.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
            }
            step = rec.history.step.num if rec.history.HasField("step") else items.get("_step")
            out[int(step)] = items
    return out


def test_tensorboard_logs_config_and_histograms(sort_yaml, tmp_path, capsys):
    """The config as text, and at each evaluation the halting-step histogram of held-out
    samples: fixed halting halts every sample at its last step, so all mass sits there."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["run", str(sort_yaml), "--out", str(run), "--quiet", "train.steps=4",
            "train.eval_every=2", "train.log_every=2", "train.threads=1", "train.flops_every=0",
            "callbacks=[{name: tensorboard, halting_samples: 64}]"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    events = EventAccumulator(
        str(run / "tensorboard"), size_guidance={"tensors": 0, "histograms": 0}
    )
    events.Reload()
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: sort" in text and "steps: 4" in text
    hists = events.Histograms("halting/steps")
    assert [h.step for h in hists] == [2, 4]
    config = yaml.safe_load((run / "config.yaml").read_text())
    limit = config["model"]["halting"].get("max_steps", 1)
    h = hists[-1].histogram_value
    assert h.num == 64 and h.min == 1 and h.max == limit
    assert list(h.bucket)[-1] == 64 and sum(h.bucket) == 64


def test_tensorboard_histograms_expert_usage_by_router(sort_yaml, tmp_path, capsys):
    """A dynmoe FFN's router: one histogram per router, one bucket per expert, holding the
    router's activation counts (summed they are the (token, expert) pairs it activated)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["run", str(sort_yaml), "--out", str(run), "--quiet", "train.steps=2",
            "train.eval_every=2", "train.log_every=2", "train.threads=1", "train.flops_every=0",
            "model.recursion.block.ffn={name: dynmoe, experts: 4, router: {name: topk_softmax, top_k: 2}}",
            "callbacks=[{name: tensorboard, halting_samples: 0}]"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    tags = [t for t in events.Tags()["histograms"] if t.startswith("experts/")]
    assert len(tags) == 2  # two layers, a router each
    for tag in tags:
        (h,) = events.Histograms(tag)
        buckets = list(h.histogram_value.bucket)
        assert len(buckets) == 4 and (h.histogram_value.min, h.histogram_value.max) == (0, 3)
        # top-2 of 4: every routed token activates exactly 2 experts
        assert sum(buckets) == h.histogram_value.num and sum(buckets) % 2 == 0 and sum(buckets) > 0
    assert "halting/steps" not in events.Tags()["histograms"]


def test_the_older_resume_form_keeps_an_override_after_resume(short_run, sort_yaml, capsys):
    """`run FILE --out DIR --resume key=value`: argparse hands key=value to --resume; it is an
    override (here the run's own, so the finished run has nothing to do)."""
    overrides = ["train.log_every=1", "train.eval_every=0", "train.threads=1",
                 "optimizer.decay=cosine", "optimizer.warmup_steps=0", "train.flops_every=0"]  # fmt: skip
    argv = ["run", str(sort_yaml), "--out", str(short_run), "--resume", "train.steps=6", *overrides]
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    argv[argv.index("train.steps=6")] = "train.steps=7"
    assert main(argv) == 2  # a different config is refused
    assert "holds a run of a different config" in capsys.readouterr().err
