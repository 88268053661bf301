"""On-disk data cache and deterministic distinct generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ponderkit import datacache


class Builder:
    def __init__(self, value: int = 0) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {
            "x": np.arange(6, dtype=np.int8).reshape(2, 3) + self.value,
            "y": np.array([1.5, 2.5]),
        }


def test_second_call_uses_cache(tmp_path):
    build = Builder()
    params = {"n": 2, "version": 1}
    a = datacache.cached_arrays("toy", params, build, cache_dir=tmp_path)
    b = datacache.cached_arrays("toy", dict(reversed(params.items())), build, cache_dir=tmp_path)
    assert build.calls == 1
    assert a.keys() == b.keys() == {"x", "y"}
    for k in a:
        assert np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
    key = datacache.cache_key("toy", params)[:16]
    assert (tmp_path / "toy" / f"{key}.npz").is_file()
    meta = json.loads((tmp_path / "toy" / f"{key}.json").read_text())
    assert meta["params"] == params and meta["namespace"] == "toy"
    assert not [p for p in (tmp_path / "toy").iterdir() if p.suffix == ".tmp"]


def test_different_params_different_entries(tmp_path):
    b1, b2, b3 = Builder(0), Builder(10), Builder(20)
    a = datacache.cached_arrays("toy", {"n": 2, "version": 1}, b1, cache_dir=tmp_path)
    b = datacache.cached_arrays("toy", {"n": 3, "version": 1}, b2, cache_dir=tmp_path)
    c = datacache.cached_arrays("toy", {"n": 2, "version": 2}, b3, cache_dir=tmp_path)
    d = datacache.cached_arrays("other", {"n": 2, "version": 1}, Builder(30), cache_dir=tmp_path)
    assert (b1.calls, b2.calls, b3.calls) == (1, 1, 1)
    assert len({int(v["x"][0, 0]) for v in (a, b, c, d)}) == 4
    assert len(list((tmp_path / "toy").glob("*.npz"))) == 3


def test_corrupt_entry_is_rebuilt(tmp_path):
    build = Builder()
    params = {"n": 2, "version": 1}
    datacache.cached_arrays("toy", params, build, cache_dir=tmp_path)
    (path,) = (tmp_path / "toy").glob("*.npz")
    path.write_bytes(b"not a zip file")
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        out = datacache.cached_arrays("toy", params, build, cache_dir=tmp_path)
    assert build.calls == 2
    assert np.array_equal(out["x"], Builder()()["x"])
    datacache.cached_arrays("toy", params, build, cache_dir=tmp_path)
    assert build.calls == 2  # the rebuilt entry is readable again


def test_truncated_entry_is_rebuilt(tmp_path):
    build = Builder()
    params = {"n": 2, "version": 1}
    datacache.cached_arrays("toy", params, build, cache_dir=tmp_path)
    (path,) = (tmp_path / "toy").glob("*.npz")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(RuntimeWarning):
        datacache.cached_arrays("toy", params, build, cache_dir=tmp_path)
    assert build.calls == 2


def test_default_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDERKIT_CACHE", str(tmp_path / "env-cache"))
    assert datacache.default_cache_dir() == tmp_path / "env-cache"
    datacache.cached_arrays("toy", {"version": 1}, Builder())
    assert list((tmp_path / "env-cache" / "toy").glob("*.npz"))
    monkeypatch.delenv("PONDERKIT_CACHE")
    assert datacache.default_cache_dir().parts[-2:] == (".cache", "ponderkit")


def test_bad_params(tmp_path):
    with pytest.raises(ValueError, match="version"):
        datacache.cached_arrays("toy", {"n": 1}, Builder(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="JSON"):
        datacache.cached_arrays("toy", {"version": 1, "f": object()}, Builder(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="namespace"):
        datacache.cached_arrays("../up", {"version": 1}, Builder(), cache_dir=tmp_path)
    with pytest.raises(TypeError, match="object"):
        datacache.cached_arrays(
            "toy", {"version": 1}, lambda: {"x": np.array([None])}, cache_dir=tmp_path
        )


def _draw_small(ss: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(ss)
    v = rng.integers(0, 12, size=1)  # few values: duplicates are common
    return v, v * 10


def test_generate_distinct_dedups_deterministically():
    a = datacache.generate_distinct(_draw_small, 10, seed=3, workers=1)
    b = datacache.generate_distinct(_draw_small, 10, seed=3, workers=1)
    assert a[0].shape == (10, 1) and a[1].shape == (10, 1)
    assert len(set(a[0][:, 0].tolist())) == 10
    assert np.array_equal(a[1], a[0] * 10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(RuntimeError, match="distinct"):
        datacache.generate_distinct(_draw_small, 13, seed=3, workers=1, max_attempts=20)


def test_parallel_builders_build_once_and_the_others_wait(tmp_path, capsys):
    """Four threads ask for the same data set at once: one builds (slowly), the others wait
    on the lock and load what it wrote."""
    import threading
    import time

    started = threading.Event()
    asking = threading.Semaphore(0)  # released by each other thread as it asks

    class Slow(Builder):
        def __call__(self):
            started.set()
            for _ in range(3):  # hold the build until the three others have asked
                asking.acquire(timeout=10)
            time.sleep(0.3)  # and then reached the lock
            return super().__call__()

    build = Slow()
    params = {"n": 2, "version": 1}
    got = []

    def one() -> None:
        got.append(datacache.cached_arrays("toy", params, build, cache_dir=tmp_path))

    def other() -> None:
        asking.release()
        one()

    first = threading.Thread(target=one)
    first.start()
    started.wait(5)
    others = [threading.Thread(target=other) for _ in range(3)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(10)
    assert build.calls == 1 and len(got) == 4
    assert all(np.array_equal(g["x"], got[0]["x"]) for g in got)
    # each that found the lock held said so (a thread slower than the build just loads)
    waits = capsys.readouterr().err.count("waiting for another process to build the toy")
    assert 1 <= waits <= 3


def test_a_failed_build_leaves_the_lock_free(tmp_path):
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        datacache.cached_arrays("toy", {"version": 1}, broken, cache_dir=tmp_path)
    build = Builder()
    datacache.cached_arrays("toy", {"version": 1}, build, cache_dir=tmp_path)
    assert build.calls == 1


def _square(seq: np.random.SeedSequence) -> tuple[np.ndarray]:
    return (np.random.default_rng(seq).integers(0, 1 << 30, size=3),)


def test_generation_says_its_progress_off_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datacache, "PROGRESS_EVERY_S", 0.0)  # a line at every chunk
    params = {"version": 1}

    def build():
        (x,) = datacache.generate_distinct(_square, 200, seed=0, workers=1)
        return {"x": x}

    datacache.cached_arrays("squares", params, build, cache_dir=tmp_path)
    lines = capsys.readouterr().err.splitlines()
    # 200 samples in chunks of 64: lines after 64, 128 and 192 (none at the end: done)
    shares = [(64, "32%"), (128, "64%"), (192, "96%")]
    assert [x.split(", ~")[0] for x in lines] == [
        f"generating squares data set: {n} of 200 samples ({p})" for n, p in shares
    ]
    datacache.cached_arrays("squares", params, build, cache_dir=tmp_path)
    assert capsys.readouterr().err == ""  # loaded: nothing generated


def test_progress_bar_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = datacache.Progress(100, "toy data set", stream=stream, every_s=0)
    progress.advance(40)
    progress.advance(60)
    progress.close()
    assert progress.bar is not None and progress.bar.n == 100
    assert "generating toy data set" in stream.getvalue()
