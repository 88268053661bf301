"""Read and write data sets on disk: the TRM/HRM builder layout, ``.npz`` and JSONL.

A split is found under a root directory ``ROOT`` as (first match wins):

``ROOT/<split>/dataset.json`` -- the TRM/HRM builder layout
    ``dataset.json`` (``vocab_size``, ``seq_len``, ``ignore_label_id``,
    ``num_puzzle_identifiers``, ``sets``) and per set name ``S`` in ``sets`` (``all``):
    ``S__inputs.npy`` (E, T) and ``S__labels.npy`` (E, T) token ids per example,
    ``S__puzzle_identifiers.npy`` (P,) one id per puzzle, ``S__puzzle_indices.npy`` (P+1,)
    example offsets of each puzzle, ``S__group_indices.npy`` (G+1,) puzzle offsets of each
    group (a group is a base puzzle and its augmentations).  Labels equal to
    ``ignore_label_id`` (0, their padding) become ``IGNORE_LABEL`` (-100), so padding never
    counts in the loss or the accuracy.  Each example gets its puzzle's identifier.
``ROOT/<split>.npz`` -- arrays ``inputs`` (N, T) and ``labels`` (N, T) of integer token ids
    (labels may hold -100 where a position is not scored) and optionally ``puzzle_ids`` (N,).
``ROOT/<split>.jsonl`` -- one object a line: ``{"input": [...], "label": [...]}`` (and
    optionally ``"puzzle_id": k``); every line has the same length.

When ``ROOT`` itself is a split (it holds ``dataset.json``, or is a ``.npz``/``.jsonl``
file), it is used for the evaluation split (``ponderkit eval RUN --data ROOT``).
Every problem is a :class:`DataError` of one line naming the file and the example index.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import attrs
import numpy as np
from ponderkit import IGNORE_LABEL, InputError

TRM_ARRAYS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


class DataError(InputError):
    """A data file that cannot be used: the message names the file and what is wrong."""


@attrs.frozen
class Split:
    """One split in memory: ``inputs``/``labels`` (N, T) int, ``puzzle_ids`` (N,) int."""

    inputs: np.ndarray
    labels: np.ndarray
    puzzle_ids: np.ndarray
    source: str
    vocab_size: int | None = None  # declared by the file (TRM layout), else None
    num_puzzle_ids: int | None = None


def locate(root: Path, split: str) -> Path:
    """The path holding ``split`` under ``root`` (see the module docstring)."""
    root = Path(root)
    for candidate in (root / split, root / f"{split}.npz", root / f"{split}.jsonl"):
        if (candidate / "dataset.json").exists() or candidate.is_file():
            return candidate
    if (root / "dataset.json").exists() or root.is_file():
        return root
    raise DataError(
        f"{root}: no {split!r} split (expected {root / split}/dataset.json in the TRM/HRM "
        f"layout, {root / split}.npz or {root / split}.jsonl)"
    )


def read_split(path: Path) -> Split:
    """Read one split from a TRM/HRM directory, a ``.npz`` or a ``.jsonl`` file."""
    path = Path(path)
    if path.is_dir():
        return _read_trm(path)
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    raise DataError(f"{path}: unknown data format (use a TRM/HRM directory, .npz or .jsonl)")


def _regular(path: Path) -> None:
    """Refuse what is not a regular file before reading it: a named pipe would block the
    read forever, a device never end, a link loop fail deep inside numpy."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise DataError(f"{path}: {kind}; a data file must be a regular file")


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer_array(file: Path, name: str, arr: np.ndarray) -> None:
    """Token ids and offsets are integers: a float array would be truncated silently."""
    if arr.dtype.kind not in "iu":
        raise DataError(f"{file}: {name} holds {arr.dtype} values, expected integers")


def _read_trm(folder: Path) -> Split:
    meta_path = folder / "dataset.json"
    _regular(meta_path)
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: cannot read it ({_short(exc)})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: a JSON {type(meta).__name__}, expected an object")
    for key in ("vocab_size", "seq_len"):
        if not _whole_number(meta.get(key)) or meta[key] < 1:
            raise DataError(f"{meta_path}: needs a positive integer {key!r}")
    ignore = meta.get("ignore_label_id")
    if ignore is not None and not _whole_number(ignore):
        raise DataError(f"{meta_path}: 'ignore_label_id' must be an integer or null")
    sets = meta.get("sets") or ["all"]
    if not isinstance(sets, list) or not all(
        isinstance(n, str) and n and "/" not in n for n in sets
    ):
        raise DataError(f"{meta_path}: 'sets' must be a list of set names")
    parts = []
    for name in sets:
        arrays = {}
        for field in TRM_ARRAYS:
            file = folder / f"{name}__{field}.npy"
            _regular(file)
            try:
                arrays[field] = np.load(file, mmap_mode="r")
            except Exception as exc:  # noqa: BLE001 -- numpy's many ways to refuse a file
                raise DataError(f"{file}: cannot read it ({_short(exc)})") from None
            _integer_array(file, field, arrays[field])
        parts.append(_examples(folder, name, arrays, meta["seq_len"], ignore))
    inputs = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([p[2] for p in parts])
    num_ids = meta.get("num_puzzle_identifiers")
    return Split(inputs, labels, ids, str(folder), meta["vocab_size"], num_ids)


def _examples(folder: Path, name: str, a: dict, seq_len: int, ignore: int | None):
    x, y = a["inputs"], a["labels"]
    file = folder / f"{name}__inputs.npy"
    if x.ndim != 2 or x.shape[1] != seq_len:
        raise DataError(f"{file}: shape {x.shape}, expected (examples, {seq_len}) (seq_len)")
    if y.shape != x.shape:
        raise DataError(f"{folder / f'{name}__labels.npy'}: shape {y.shape}, inputs {x.shape}")
    offsets, ids = np.asarray(a["puzzle_indices"]), np.asarray(a["puzzle_identifiers"])
    off_file = folder / f"{name}__puzzle_indices.npy"
    if offsets.ndim != 1 or len(offsets) != len(ids) + 1:
        raise DataError(
            f"{off_file}: {len(offsets)} offsets for {len(ids)} puzzles (need puzzles + 1)"
        )
    if offsets[0] != 0 or offsets[-1] != len(x) or np.any(np.diff(offsets) < 0):
        raise DataError(
            f"{off_file}: offsets must rise from 0 to the {len(x)} examples "
            f"(got {offsets[0]}..{offsets[-1]})"
        )
    groups = np.asarray(a["group_indices"])
    if groups.ndim != 1 or groups[0] != 0 or groups[-1] != len(ids):
        raise DataError(
            f"{folder / f'{name}__group_indices.npy'}: offsets must run from 0 to the "
            f"{len(ids)} puzzles"
        )
    per_example = np.repeat(ids.astype(np.int64), np.diff(offsets))
    labels = np.array(y, dtype=np.int64)
    if ignore is not None:
        labels[labels == ignore] = IGNORE_LABEL
    return np.asarray(x, dtype=np.int64), labels, per_example


def _read_npz(path: Path) -> Split:
    _regular(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 -- numpy's many ways to refuse a file
        raise DataError(f"{path}: cannot read it ({exc})") from None
    for key in ("inputs", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: no array {key!r} (has: {', '.join(arrays) or 'none'})")
    x, y = arrays["inputs"], arrays["labels"]
    for key, arr in arrays.items():
        if key in ("inputs", "labels", "puzzle_ids"):
            _integer_array(path, key, arr)
    if x.ndim != 2:
        raise DataError(f"{path}: inputs has shape {x.shape}, expected (examples, seq_len)")
    if y.shape != x.shape:
        raise DataError(f"{path}: labels has shape {y.shape}, inputs {x.shape}")
    ids = arrays.get("puzzle_ids", np.zeros(len(x), dtype=np.int64))
    if ids.shape != (len(x),):
        raise DataError(f"{path}: puzzle_ids has shape {ids.shape}, expected ({len(x)},)")
    return Split(x.astype(np.int64), y.astype(np.int64), ids.astype(np.int64), str(path))


def _read_jsonl(path: Path) -> Split:
    xs, ys, ids = [], [], []
    _regular(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not JSON ({_short(exc)})") from None
        if not isinstance(row, dict) or "input" not in row or "label" not in row:
            raise DataError(f"{path}:{n}: need an object with 'input' and 'label' lists")
        x, y = row["input"], row["label"]
        for key, value in (("input", x), ("label", y)):
            if not isinstance(value, list) or not value:
                raise DataError(f"{path}:{n}: {key!r} must be a non-empty list of token ids")
            # one pass, cheap per token (json.loads itself costs more): ints that fit, no bools
            bad = [t for t in value if type(t) is not int or not -(2**62) < t < 2**62]
            if bad:
                raise DataError(f"{path}:{n}: {key!r} holds {_short(bad[0])}, not a token id")
        if len(x) != len(y) or (xs and len(x) != len(xs[0])):
            want = len(xs[0]) if xs else len(x)
            raise DataError(
                f"{path}:{n}: input has {len(x)} tokens and label {len(y)}; every line needs {want}"
            )
        pid = row.get("puzzle_id", 0)
        if not _whole_number(pid) or not 0 <= pid < 2**62:
            raise DataError(f"{path}:{n}: 'puzzle_id' must be an integer >= 0, got {_short(pid)}")
        xs.append(x)
        ys.append(y)
        ids.append(pid)
    if not xs:
        raise DataError(f"{path}: no examples")
    return Split(
        np.array(xs, dtype=np.int64),
        np.array(ys, dtype=np.int64),
        np.array(ids, dtype=np.int64),
        str(path),
    )


def _short(value: object, limit: int = 200) -> str:
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_split(split: Split, vocab_size: int, seq_len: int, num_puzzle_ids: int) -> None:
    """Raise a :class:`DataError` naming the first example out of shape or vocabulary."""
    where = split.source
    if split.inputs.shape[1] != seq_len:
        raise DataError(
            f"{where}: sequences of {split.inputs.shape[1]} tokens, expected {seq_len} "
            "(the model's seq_len)"
        )
    for name, arr, lo in (("input", split.inputs, 0), ("label", split.labels, 0)):
        scored = arr if name == "input" else np.where(arr == IGNORE_LABEL, 0, arr)
        bad = (scored < lo) | (scored >= vocab_size)
        if bad.any():
            i, t = np.argwhere(bad)[0]
            raise DataError(
                f"{where}: example {i} position {t}: {name} token {arr[i, t]} is outside the "
                f"vocabulary [0, {vocab_size})"
            )
    bad_ids = (split.puzzle_ids < 0) | (split.puzzle_ids >= max(num_puzzle_ids, 1))
    if bad_ids.any():
        i = int(np.argmax(bad_ids))
        raise DataError(
            f"{where}: example {i}: puzzle id {split.puzzle_ids[i]} is outside "
            f"[0, {max(num_puzzle_ids, 1)}) (the puzzle-embedding table)"
        )


def write_trm_split(
    folder: Path,
    inputs: np.ndarray,
    labels: np.ndarray,
    vocab_size: int,
    puzzle_ids: np.ndarray | None = None,
    ignore_label_id: int = 0,
) -> Path:
    """Write one split in the TRM/HRM layout, one example per puzzle and one puzzle per
    group (how TRM stores Sudoku and maze sets); ``labels`` equal to -100 are written as
    ``ignore_label_id``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = np.asarray(inputs, dtype=np.int32), np.asarray(labels, dtype=np.int64)
    n = len(x)
    ids = np.zeros(n, dtype=np.int32) if puzzle_ids is None else np.asarray(puzzle_ids, np.int32)
    arrays = {
        "inputs": x,
        "labels": np.where(y == IGNORE_LABEL, ignore_label_id, y).astype(np.int32),
        "puzzle_identifiers": ids,
        "puzzle_indices": np.arange(n + 1, dtype=np.int32),
        "group_indices": np.arange(n + 1, dtype=np.int32),
    }
    for field, arr in arrays.items():
        np.save(folder / f"all__{field}.npy", arr)
    meta = {
        "pad_id": 0,
        "ignore_label_id": ignore_label_id,
        "blank_identifier_id": 0,
        "vocab_size": int(vocab_size),
        "seq_len": int(x.shape[1]),
        "num_puzzle_identifiers": int(ids.max(initial=0)) + 1,
        "total_groups": n,
        "mean_puzzle_examples": 1.0,
        "sets": ["all"],
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder
