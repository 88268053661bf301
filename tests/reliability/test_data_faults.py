"""Bad data files for ``task: files``: one line naming the file (and line) and what is wrong,
exit 2, at validate, before any work; nothing hangs on a named pipe.

Before: a JSONL input that is no list, a string puzzle id, non-UTF-8 bytes or a
``dataset.json`` holding a list ended in tracebacks; float arrays were truncated silently.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

GOOD = [
    {"input": [1, 2, 3, 4], "label": [4, 3, 2, 1]},
    {"input": [2, 1, 4, 3], "label": [3, 4, 1, 2]},
]


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def row(**fields):
    return {**GOOD[0], **fields}


# the eval split data/test.jsonl replaced by: (id, text or bytes, expected)
JSONL_CASES = [
    ("input_int", jsonl([row(input=3)]), "test.jsonl:1: 'input' must be a non-empty list"),
    ("input_str", jsonl([row(input="1234")]), "test.jsonl:1: 'input' must be a non-empty list"),
    ("input_dict", jsonl([row(input={"a": 1})]), "test.jsonl:1: 'input' must be a non-empty"),
    ("input_null", jsonl([row(input=None)]), "test.jsonl:1: 'input' must be a non-empty list"),
    ("input_empty", jsonl([row(input=[], label=[])]), "test.jsonl:1: 'input' must be a non-empty"),
    ("input_nested", jsonl([row(input=[[1, 2], [3, 4]])]), "test.jsonl:1: 'input' holds [1, 2]"),
    ("input_bools", jsonl([row(input=[True, False, True, 1])]), "test.jsonl:1: 'input' holds True"),
    ("input_floats", jsonl([row(input=[1.5, 2, 3, 4])]), "test.jsonl:1: 'input' holds 1.5"),
    ("input_strings", jsonl([row(input=["1", 2, 3, 4])]), "test.jsonl:1: 'input' holds '1'"),
    ("input_huge", jsonl([row(input=[10**30, 2, 3, 4])]), "test.jsonl:1: 'input' holds 1000000"),
    ("label_str", jsonl([row(label="4321")]), "test.jsonl:1: 'label' must be a non-empty list"),
    ("label_floats", jsonl([row(label=[4.0, 3, 2, 1])]), "test.jsonl:1: 'label' holds 4.0"),
    ("label_missing", jsonl([{"input": [1, 2, 3, 4]}]), "test.jsonl:1: need an object with"),
    ("row_list", jsonl([[1, 2, 3]]), "test.jsonl:1: need an object with 'input' and 'label'"),
    ("row_string", jsonl(['"text"']), "test.jsonl:1: need an object with 'input'"),
    ("row_null", jsonl(["null"]), "test.jsonl:1: need an object with 'input'"),
    ("second_row_bad", jsonl([GOOD[0], row(input=7)]), "test.jsonl:2: 'input' must be"),
    ("not_json", '{"input": [1, 2,\n', "test.jsonl:1: not JSON"),
    ("trailing_garbage", jsonl([GOOD[0]]) + "}}\n", "test.jsonl:2: not JSON"),
    (
        "not_utf8",
        b'{"input": [1, 2, 3, 4], "label": [4, 3, 2, 1], "x": "\xff"}\n',
        "test.jsonl:1: not UTF-8 text (byte 0xff)",
    ),
    (
        "latin1_line2",
        jsonl([GOOD[0]]).encode() + '{"é": 1}\n'.encode("latin-1"),
        "test.jsonl:2: not UTF-8",
    ),
    ("puzzle_id_str", jsonl([row(puzzle_id="7")]), "test.jsonl:1: 'puzzle_id' must be an integer"),
    ("puzzle_id_neg", jsonl([row(puzzle_id=-1)]), "test.jsonl:1: 'puzzle_id' must be an integer"),
    ("puzzle_id_float", jsonl([row(puzzle_id=1.5)]), "test.jsonl:1: 'puzzle_id' must be"),
    ("puzzle_id_bool", jsonl([row(puzzle_id=True)]), "test.jsonl:1: 'puzzle_id' must be"),
    ("puzzle_id_list", jsonl([row(puzzle_id=[1])]), "test.jsonl:1: 'puzzle_id' must be"),
    ("puzzle_id_huge", jsonl([row(puzzle_id=2**70)]), "test.jsonl:1: 'puzzle_id' must be"),
    ("lengths_differ", jsonl([row(label=[1, 2])]), "test.jsonl:1: input has 4 tokens and label 2"),
    ("rows_differ", jsonl([GOOD[0], row(input=[1, 2], label=[2, 1])]), "test.jsonl:2: input has 2"),
    ("token_negative", jsonl([row(input=[-5, 2, 3, 4])]), "example 0 position 0: input token -5"),
    ("empty_file", "", "test.jsonl: no examples"),
    ("blank_lines", "\n  \n\n", "test.jsonl: no examples"),
    ("seq_len_differs", jsonl([row(input=[1, 2, 3], label=[1, 2, 3])]), "sequences of 3 tokens"),
]


def trm_folder(root, **meta_changes):
    """data/test in the TRM/HRM layout, two examples of 4 tokens."""
    folder = root / "data" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    x = np.array([[1, 2, 3, 4], [2, 1, 4, 3]], dtype=np.int32)
    arrays = {"inputs": x, "labels": x[:, ::-1].copy(), "puzzle_identifiers": np.zeros(2, np.int32),
              "puzzle_indices": np.arange(3, dtype=np.int32), "group_indices": np.arange(3, dtype=np.int32)}  # fmt: skip
    for name, arr in arrays.items():
        np.save(folder / f"all__{name}.npy", arr)
    meta = {"vocab_size": 6, "seq_len": 4, "ignore_label_id": 0, "num_puzzle_identifiers": 1,
            "sets": ["all"], **meta_changes}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def _meta(text):
    return lambda folder: (folder / "dataset.json").write_bytes(text)


def _npy(name, arr):
    return lambda folder: np.save(folder / f"all__{name}.npy", arr)


def _raw(name, data):
    return lambda folder: (folder / name).write_bytes(data)


def _fifo(name):
    def make(folder):
        (folder / name).unlink()
        os.mkfifo(folder / name)

    return make


def _loop(name):
    def make(folder):
        (folder / name).unlink()
        (folder / name).symlink_to(name)

    return make


TRM_CASES = [
    ("meta_list", _meta(b"[1, 2]"), "dataset.json: a JSON list, expected an object"),
    ("meta_string", _meta(b'"x"'), "dataset.json: a JSON str, expected an object"),
    ("meta_null", _meta(b"null"), "dataset.json: a JSON NoneType, expected an object"),
    ("meta_not_json", _meta(b"{vocab"), "dataset.json: cannot read it"),
    ("meta_not_utf8", _meta(b'{"vocab_size": "\xff"}'), "dataset.json: cannot read it"),
    ("meta_no_vocab", _meta(b'{"seq_len": 4}'), "dataset.json: needs a positive integer 'vocab"),
    (
        "meta_seq_zero",
        _meta(b'{"vocab_size": 6, "seq_len": 0}'),
        "needs a positive integer 'seq_len'",
    ),
    ("meta_seq_str", _meta(b'{"vocab_size": 6, "seq_len": "4"}'), "positive integer 'seq_len'"),
    ("meta_vocab_bool", _meta(b'{"vocab_size": true, "seq_len": 4}'), "integer 'vocab_size'"),
    ("meta_sets_str", _meta(b'{"vocab_size": 6, "seq_len": 4, "sets": "all"}'), "'sets' must be"),
    (
        "meta_sets_escape",
        _meta(b'{"vocab_size": 6, "seq_len": 4, "sets": ["../x"]}'),
        "'sets' must",
    ),
    (
        "meta_ignore_str",
        _meta(b'{"vocab_size": 6, "seq_len": 4, "ignore_label_id": "0"}'),
        "'ignore_label_id' must be an integer",
    ),
    ("inputs_float", _npy("inputs", np.ones((2, 4))), "all__inputs.npy: inputs holds float64"),
    ("labels_float", _npy("labels", np.ones((2, 4), np.float32)), "labels holds float32"),
    ("offsets_float", _npy("puzzle_indices", np.arange(3.0)), "puzzle_indices holds float64"),
    (
        "inputs_object",
        _npy("inputs", np.array([[1, "a"]], dtype=object)),
        "all__inputs.npy: cannot",
    ),
    ("inputs_garbage", _raw("all__inputs.npy", b"\x93NUMPY garbage"), "all__inputs.npy: cannot"),
    ("inputs_empty", _raw("all__inputs.npy", b""), "all__inputs.npy: cannot read it"),
    ("inputs_1d", _npy("inputs", np.arange(8, dtype=np.int32)), "all__inputs.npy: shape (8,)"),
    ("labels_shape", _npy("labels", np.ones((2, 3), np.int32)), "all__labels.npy: shape (2, 3)"),
    ("offsets_short", _npy("puzzle_indices", np.arange(2, dtype=np.int32)), "2 offsets for 2"),
    ("groups_bad", _npy("group_indices", np.array([1, 2], np.int32)), "group_indices.npy: offsets"),
    ("inputs_missing", lambda f: (f / "all__inputs.npy").unlink(), "all__inputs.npy: cannot read"),
    ("meta_fifo", _fifo("dataset.json"), "dataset.json: a named pipe"),
    ("inputs_fifo", _fifo("all__inputs.npy"), "all__inputs.npy: a named pipe"),
    ("inputs_loop", _loop("all__inputs.npy"), "all__inputs.npy: cannot read it"),
    (
        "token_negative_npy",
        _npy("inputs", np.array([[1, 2, 3, -1], [2, 1, 4, 3]], np.int32)),
        "example 0 position 3: input token -1 is outside the vocabulary",
    ),
]


def npz(**arrays):
    def make(root):
        np.savez(root / "data" / "test.npz", **arrays)

    return make


X = np.array([[1, 2, 3, 4]])
NPZ_CASES = [
    ("npz_float_inputs", npz(inputs=X * 1.0, labels=X), "test.npz: inputs holds float64"),
    ("npz_float_labels", npz(inputs=X, labels=X * 0.5), "test.npz: labels holds float64"),
    ("npz_str_ids", npz(inputs=X, labels=X, puzzle_ids=np.array(["a"])), "puzzle_ids holds <U1"),
    ("npz_no_labels", npz(inputs=X), "test.npz: no array 'labels'"),
    ("npz_1d", npz(inputs=X[0], labels=X[0]), "test.npz: inputs has shape (4,)"),
    ("npz_shape", npz(inputs=X, labels=X[:, :2]), "test.npz: labels has shape (1, 2)"),
    ("npz_ids_shape", npz(inputs=X, labels=X, puzzle_ids=np.zeros(3, int)), "puzzle_ids has shape"),
    (
        "npz_garbage",
        lambda root: (root / "data" / "test.npz").write_bytes(b"PK\x03\x04junk"),
        "test.npz: cannot read it",
    ),
]
# the task's own fields: (id, task mapping text, expected)
TASK_CASES = [
    ("eval_limit_zero", "eval_limit: 0", "task.eval_limit: 'eval_limit' must be > 0"),
    ("eval_limit_neg", "eval_limit: -1", "task.eval_limit: 'eval_limit' must be > 0"),
    ("vocab_zero", "vocab_size: 0", "task.vocab_size: 'vocab_size' must be > 0"),
    ("vocab_neg", "vocab_size: -3", "task.vocab_size: 'vocab_size' must be > 0"),
    ("vocab_small", "vocab_size: 3", "input token 3 is outside the vocabulary [0, 3)"),
    ("no_split", "eval_split: valid", "no 'valid' split"),
    ("augment_typo", "augment: sudok", "task.augment"),
    ("train_split_missing", "train_split: training", "no 'training' split"),
]


def files_experiment(here, base_yaml, task_extra: str = "") -> None:
    task = "task: {name: files, path: data" + (f", {task_extra}" if task_extra else "") + "}"
    (here / "files.yaml").write_text(base_yaml.replace(
        "task: {name: sort, length: 6, values: 8, eval_size: 64}", task))  # fmt: skip
    (here / "data").mkdir(exist_ok=True)
    (here / "data" / "train.jsonl").write_text(jsonl(GOOD))


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in JSONL_CASES],
                         ids=[c[0] for c in JSONL_CASES])  # fmt: skip
def test_bad_jsonl(here, fails, base_yaml, content, expected):
    files_experiment(here, base_yaml)
    path = here / "data" / "test.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails(["validate", "files.yaml"], expected)


@pytest.mark.parametrize(("damage", "expected"), [c[1:] for c in TRM_CASES],
                         ids=[c[0] for c in TRM_CASES])  # fmt: skip
def test_bad_trm_layout(here, fails, base_yaml, damage, expected):
    files_experiment(here, base_yaml)
    damage(trm_folder(here))
    fails(["validate", "files.yaml"], expected)


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in NPZ_CASES],
                         ids=[c[0] for c in NPZ_CASES])  # fmt: skip
def test_bad_npz(here, fails, base_yaml, make, expected):
    files_experiment(here, base_yaml)
    make(here)
    fails(["validate", "files.yaml"], expected)


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in TASK_CASES],
                         ids=[c[0] for c in TASK_CASES])  # fmt: skip
def test_bad_files_task_field(here, fails, base_yaml, extra, expected):
    files_experiment(here, base_yaml, extra)
    (here / "data" / "test.jsonl").write_text(jsonl(GOOD))
    fails(["validate", "files.yaml"], expected)


def test_the_good_files_validate(here, capsys, base_yaml):
    """The reference the cases break: the same files, unbroken, validate."""
    from ponderkit.app.cli import main

    files_experiment(here, base_yaml, "eval_limit: 1")
    (here / "data" / "test.jsonl").write_text(jsonl(GOOD))
    assert main(["validate", "files.yaml"]) == 0, capsys.readouterr().err
    trm_folder(here)
    (here / "data" / "test.jsonl").unlink()
    assert main(["validate", "files.yaml"]) == 0, capsys.readouterr().err


def test_eval_limit_takes_the_first_examples(here, base_yaml):
    """eval_limit: 1 evaluates 1 example, null all of them (-1 used to drop the last one)."""
    from ponderkit.contract.experiment import load_experiment
    from ponderkit.contract.loading import Plugins
    from ponderkit.engine.context import BuildContext

    files_experiment(here, base_yaml)
    (here / "data" / "test.jsonl").write_text(jsonl(GOOD * 3))
    registry = Plugins(autoload=False).registry
    for limit, want in ((1, 1), (5, 5), (None, 6)):
        override = [f"task.eval_limit={'null' if limit is None else limit}"]
        spec = load_experiment(here / "files.yaml", override, registry=registry).config.task
        comp = registry.get("task", "files")
        task = comp.builder(spec.config, BuildContext(registry))
        assert sum(len(b["inputs"]) for b in task.eval_batches(4)) == want


def test_case_count():
    assert len(JSONL_CASES) + len(TRM_CASES) + len(NPZ_CASES) + len(TASK_CASES) >= 70
