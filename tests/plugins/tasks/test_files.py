"""task/files: the TRM/HRM layout read back, plain formats, errors, padding, eval --data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ponderkit import IGNORE_LABEL, accuracy, sequence_loss
from ponderkit.app.cli import main
from ponderkit.plugins.tasks.file_formats import DataError, write_trm_split
from ponderkit.plugins.tasks.files import FilesConfig, FilesTask


def _trm_split(folder, inputs, labels, ids, offsets, vocab, ignore=0):
    """The builder layout written by hand, as TRM's and HRM's build scripts lay it out."""
    folder.mkdir(parents=True)
    np.save(folder / "all__inputs.npy", np.asarray(inputs, dtype=np.int32))
    np.save(folder / "all__labels.npy", np.asarray(labels, dtype=np.int32))
    np.save(folder / "all__puzzle_identifiers.npy", np.asarray(ids, dtype=np.int32))
    np.save(folder / "all__puzzle_indices.npy", np.asarray(offsets, dtype=np.int32))
    np.save(folder / "all__group_indices.npy", np.array([0, len(ids)], dtype=np.int32))
    meta = {
        "pad_id": 0,
        "ignore_label_id": ignore,
        "blank_identifier_id": 0,
        "vocab_size": vocab,
        "seq_len": len(inputs[0]),
        "num_puzzle_identifiers": max(ids) + 1,
        "total_groups": 1,
        "mean_puzzle_examples": len(inputs) / len(ids),
        "sets": ["all"],
    }
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_trm_layout_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(1, 6, (5, 8))
    y = rng.integers(1, 6, (5, 8))
    y[:, 6:] = 0  # padding labels, as TRM pads ARC grids
    # puzzle 0 has examples 0-1, puzzle 1 examples 2-4; identifiers 3 and 1
    for split in ("train", "test"):
        _trm_split(tmp_path / split, x, y, [3, 1], [0, 2, 5], vocab=6)
    task = FilesTask(FilesConfig(path=str(tmp_path)))
    assert (task.vocab_size, task.seq_len, task.num_puzzle_ids) == (6, 8, 4)
    (batch,) = list(task.eval_batches(16))
    assert batch["inputs"].tolist() == x.tolist()
    want = np.where(y == 0, IGNORE_LABEL, y)
    assert batch["labels"].tolist() == want.tolist()
    assert batch["puzzle_ids"].tolist() == [3, 3, 1, 1, 1]
    train = next(task.train_batches(4, seed=0))
    assert train["puzzle_ids"].shape == (4,) and (train["labels"][:, 6:] == IGNORE_LABEL).all()
    # the writer produces the same layout
    write_trm_split(tmp_path / "again" / "test", x, want, 6, puzzle_ids=[3, 3, 1, 1, 1])
    again = FilesTask(FilesConfig(path=str(tmp_path / "again"), train_split=None))
    (b2,) = list(again.eval_batches(16))
    for key in ("inputs", "labels", "puzzle_ids"):
        assert torch.equal(b2[key], batch[key])


def test_npz_and_jsonl(tmp_path):
    x = np.arange(12).reshape(3, 4) % 5
    np.savez(tmp_path / "train.npz", inputs=x, labels=x)
    lines = [json.dumps({"input": r.tolist(), "label": r.tolist()}) for r in x]
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    task = FilesTask(FilesConfig(path=str(tmp_path)))
    assert (task.vocab_size, task.seq_len, task.num_puzzle_ids) == (5, 4, 1)
    (batch,) = list(task.eval_batches(8))
    assert batch["inputs"].tolist() == x.tolist()


def test_errors_name_file_and_index(tmp_path):
    x = np.ones((4, 9), dtype=np.int64)
    _trm_split(tmp_path / "train", x, x, [0], [0, 4], vocab=3)
    bad = x.copy()
    bad[2, 5] = 7
    _trm_split(tmp_path / "test", x, bad, [0], [0, 4], vocab=3)
    with pytest.raises(DataError, match=r"test: example 2 position 5: label token 7 .*\[0, 3\)"):
        FilesTask(FilesConfig(path=str(tmp_path)))
    np.savez(tmp_path / "short.npz", inputs=np.ones((2, 5), int), labels=np.ones((2, 5), int))
    with pytest.raises(DataError, match=r"short.npz: sequences of 5 tokens, expected 9"):
        FilesTask(FilesConfig(path=str(tmp_path), eval_split="short"))
    with pytest.raises(DataError, match="no 'valid' split"):
        FilesTask(FilesConfig(path=str(tmp_path), eval_split="valid"))


def test_validate_reports_a_bad_file_in_one_line(tmp_path, write, capsys):
    x = np.ones((4, 9), dtype=np.int64)
    _trm_split(tmp_path / "data" / "train", x, x, [0], [0, 4], vocab=3)
    np.savez(tmp_path / "data" / "test.npz", inputs=x + 5, labels=x)
    path = write(
        "exp.yaml",
        f"""
        name: files
        task: {{name: files, path: {tmp_path / "data"}}}
        model:
          d_model: 16
          recursion: {{name: stacked, layers: 1, block: {{name: post_norm,
            mixer: {{name: attention, heads: 2}}, ffn: {{name: swiglu}}}}}}
          halting: fixed
        """,
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "task.path" in err[0] and "test.npz: example 0 position 0: input token 6" in err[0]


def test_padding_never_counts():
    """Loss and accuracy over -100 positions equal a float64 reference over the rest."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (3, 5), generator=gen)
    labels[0, 3:] = IGNORE_LABEL
    labels[2, :4] = IGNORE_LABEL
    loss = sequence_loss(logits, labels)
    other = logits.clone()
    other[labels == IGNORE_LABEL] = torch.randn(int((labels == IGNORE_LABEL).sum()), 7) * 50
    assert torch.allclose(sequence_loss(other, labels), loss)
    logp = torch.log_softmax(logits.double(), -1)
    for b in range(3):
        keep = labels[b] != IGNORE_LABEL
        ref = -logp[b][keep].gather(-1, labels[b][keep][:, None]).mean()
        assert abs(float(loss[b]) - float(ref)) < 1e-5
    right = torch.nn.functional.one_hot(torch.where(labels < 0, 0, labels), 7).float()
    right[labels == IGNORE_LABEL] = torch.nn.functional.one_hot(torch.tensor(6), 7).float()
    labels_wrong_pad = labels.clone()
    correct, exact, valid = accuracy(right, labels_wrong_pad)
    assert exact.all() and int(valid.sum()) == int((labels != IGNORE_LABEL).sum())
    assert int(correct.sum()) == int(valid.sum())


def test_train_on_trm_layout_and_eval_other_data(tmp_path, write, capsys):
    rng = np.random.default_rng(0)

    def sorted_set(n):
        x = rng.integers(2, 8, (n, 6))
        return x, np.sort(x, axis=1)

    write_trm_split(tmp_path / "a" / "train", *sorted_set(512), vocab_size=8)
    write_trm_split(tmp_path / "a" / "test", *sorted_set(64), vocab_size=8)
    x, y = sorted_set(32)
    np.savez(tmp_path / "b.npz", inputs=x, labels=y)
    np.savez(tmp_path / "wide.npz", inputs=np.ones((2, 7), int), labels=np.ones((2, 7), int))
    exp = write(
        "exp.yaml",
        f"""
        name: files
        task: {{name: files, path: {tmp_path / "a"}}}
        model:
          d_model: 32
          recursion: {{name: stacked, layers: 2, block: {{name: post_norm,
            mixer: {{name: attention, heads: 4}}, ffn: {{name: swiglu, expansion: 2}}}}}}
          halting: fixed
        optimizer: {{lr: 3.0e-3, weight_decay: 0.01, warmup_steps: 10}}
        train: {{steps: 30, batch_size: 64, log_every: 10, eval_every: 30, threads: 1}}
        """,
    )
    run = tmp_path / "run"
    assert main(["run", str(exp), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(tmp_path / "b.npz")]) == 0
    assert "exact_acc=" in capsys.readouterr().out
    saved = json.loads((run / "eval-final-b.json").read_text())
    assert saved["data"].endswith("b.npz") and 0 <= saved["full"]["token_acc"] <= 1
    assert main(["eval", str(run), "--data", str(tmp_path / "wide.npz")]) == 2
    assert "sequences of 7 tokens; the run's model takes 6" in capsys.readouterr().err
