"""Published figures beside an ablation's result: ``reference:`` in an ablation file, checked
where it is written, and the report's verdict per variant and metric."""

from __future__ import annotations

import json
import math
import re
import statistics
import textwrap

import pytest
from ponderkit.app.cli import main
from ponderkit.contract.errors import ConfigError
from ponderkit.lab.ablation import load_ablation
from ponderkit.lab.report import reference_verdict
from ponderkit.lab.stats import difference


@pytest.fixture
def grid(write, sort_yaml):
    def _grid(text: str, name: str = "abl.yaml"):
        return write(name, f"base: {sort_yaml.name}\n" + textwrap.dedent(text).lstrip("\n"))

    return _grid


VARIANTS = """
variants:
  narrow: {model.d_model: 16}
  slow: {optimizer.lr: 1.0e-5}
"""


@pytest.mark.parametrize(
    ("reference", "message", "line"),
    [
        ("  values: {base: {loss: 1.0}, nrrow: {loss: 2.0}}", "no variant named 'nrrow'", 6),
        ("  values: {base: {los: 1.0}}", "unknown metric 'los'", 6),
        ("  values: {base: {loss: fast}}", "expected a number, got 'fast'", 6),
        ("  values: {narrow: {loss: 1.0}}", "no figures for the baseline 'base'", 6),
        ("  values: [1, 2]", "expected {VARIANT: {METRIC: NUMBER}}", 6),
        ("  figures: {base: {loss: 1.0}}", "expected {source: TEXT, values:", 5),
    ],
)
def test_a_bad_reference_is_refused_where_it_is_written(grid, registry, reference, message, line):
    path = grid(VARIANTS + "reference:\n" + reference + "\n")
    with pytest.raises(ConfigError) as err:
        load_ablation(path, registry=registry)
    text = str(err.value)
    assert message in text
    assert f"abl.yaml:{line}" in text


def test_a_misspelt_variant_gets_a_suggestion(grid, registry):
    path = grid(VARIANTS + "reference:\n  values: {base: {loss: 1.0}, nrrow: {loss: 2.0}}\n")
    with pytest.raises(ConfigError, match="did you mean 'narrow'"):
        load_ablation(path, registry=registry)


def test_verdicts_against_a_hand_computed_interval():
    # paired over 3 seeds: differences 0.10, 0.12, 0.14 -> mean 0.12, sd 0.02, se 0.02/sqrt(3)
    ours = difference({0: 1.10, 1: 1.22, 2: 1.34}, {0: 1.0, 1: 1.1, 2: 1.2})
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2), scipy.stats.t.ppf
    ci, verdict = reference_verdict(ours, +0.05)
    assert ci == pytest.approx((0.12 - half, 0.12 + half))
    assert verdict == "agrees"
    assert reference_verdict(ours, -0.05)[1] == "disagrees"
    assert reference_verdict(ours, 0.0)[1] == "source shows no difference"
    wide = difference({0: 1.0, 1: 1.3, 2: 0.9}, {0: 1.0, 1: 1.1, 2: 1.2})  # diffs 0, .2, -.3
    assert reference_verdict(wide, +0.05)[1] == "interval includes 0"
    one = difference({0: 1.2}, {0: 1.0})
    assert reference_verdict(one, 0.1) == (None, "n/a (one seed: no interval)")
    # accuracies: the interval is cut to the differences that can occur
    acc = difference({0: 0.9, 1: 0.1, 2: 0.95}, {0: 0.0, 1: 0.0, 2: 0.0})
    lo, hi = reference_verdict(acc, 0.5, bounded=True)[0]
    assert hi == 1.0 and lo > -1.0


def test_the_report_reads_each_variant_beside_the_source(grid, registry, tmp_path):
    path = grid(
        VARIANTS
        + textwrap.dedent(
            """
        overrides: {train.log_every: 5, train.eval_every: 10}
        seeds: [0, 1]
        budget: {steps: 20}
        reference:
          source: "a made-up table"
          values:
            base: {loss: 1.0, exact_acc: 0.5}
            narrow: {loss: 1.5, exact_acc: 0.25}
            slow: {loss: 0.5}
        """
        )
    )
    out = tmp_path / "out"
    assert main(["ablate", str(path), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    section = report.split("## Against the reference")[1].split("\n## ")[0]
    assert "Source: a made-up table." in section
    rows = {
        (cells[0], cells[1]): cells
        for line in section.splitlines()
        if line.startswith("| `")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {
        ("`base` (baseline)", "final loss"),
        ("`narrow`", "final loss"),
        ("`slow`", "final loss"),
        ("`base` (baseline)", "exact acc (%)"),
        ("`narrow`", "exact acc (%)"),
    }

    def final_loss(variant: str, seed: int) -> float:
        lines = (out / variant / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if '"loss"' in x][-1]

    for variant, theirs in (("narrow", +0.5), ("slow", -0.5)):
        diffs = [final_loss(variant, s) - final_loss("base", s) for s in (0, 1)]
        mean = statistics.fmean(diffs)
        half = 12.706205 * statistics.stdev(diffs) / math.sqrt(2)  # t(0.975, 1), scipy
        cells = rows[(f"`{variant}`", "final loss")]
        assert cells[3] == ("+" if theirs > 0 else "-") + "0.5"
        lo, hi = map(float, re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", cells[6]))
        assert lo == pytest.approx(mean - half, rel=1e-3, abs=1e-4)
        assert hi == pytest.approx(mean + half, rel=1e-3, abs=1e-4)
        if lo <= 0 <= hi:
            expected = "interval includes 0"
        else:
            expected = "agrees" if (mean > 0) == (theirs > 0) else "disagrees"
        assert cells[7] == expected
