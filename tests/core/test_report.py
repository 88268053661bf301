"""Reports from synthetic run directories whose statistics are known in advance."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.engine.runs import save_checkpoint
from ponderkit.lab.report import write_report
from ponderkit.lab.run_analysis import summarize_run, training_seconds
from ponderkit.lab.stats import describe, difference

PNG = b"\x89PNG\r\n\x1a\n"
T2 = 4.302652729911275  # t_{0.975, 2} (printed tables: 4.303)


def make_run(root, variant, seed, *, exact, loss, steps=(1, 2, 2, 3), final=True, **extra):
    """A run directory: config, meta, metrics (3 logs) and, when ``final``, halting.json and a
    final checkpoint. The last log holds ``exact`` and ``loss``."""
    run = root / variant / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: synthetic\n")
    (run / "meta.json").write_text(json.dumps({"seed": seed, "parameters": 1000, "git": {}}))
    records = [
        {"step": 10, "loss": 2.0, "elapsed_s": 1.0, "samples_per_s": 100.0,
         "eval/exact_acc": 0.0, "eval/token_acc": 0.5},
        {"step": 20, "loss": 1.0, "elapsed_s": 2.0, "samples_per_s": 300.0, **extra},
        {"step": 30, "loss": loss, "elapsed_s": 3.0, "samples_per_s": 200.0,
         "eval/exact_acc": exact, "eval/token_acc": (1 + exact) / 2, "eval/steps": 4.0},
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    halting = {"max_steps": 4, "steps": list(steps), "mean_steps": sum(steps) / len(steps),
               "exact_acc": exact - 0.01, "token_acc": 0.9, "exact_acc_all_steps": exact,
               "token_acc_all_steps": 0.9}  # fmt: skip
    if final:  # an interrupted run has neither
        (run / "halting.json").write_text(json.dumps(halting))
        save_checkpoint(run, "final", {"w": torch.zeros(2)}, {"step": 30})
    return run


@pytest.fixture
def ablation_dir(tmp_path):
    root = tmp_path / "abl"
    for seed, exact in enumerate([0.5, 0.7, 0.9]):
        make_run(root, "base", seed, exact=exact, loss=0.4 + 0.1 * seed)
    for seed, exact in enumerate([0.6, 0.9, 1.0]):
        make_run(root, "better", seed, exact=exact, loss=0.2, steps=(1, 1))
    make_run(root, "single", 0, exact=0.25, loss=0.3)
    make_run(root, "broken", 0, exact=0.0, loss=9.0, final=False)
    plan = {
        "name": "synthetic",
        "baseline": "base",
        "seeds": [0, 1, 2],
        "budget_text": "30 optimizer steps per run",
        "variants": {"base": [], "better": ["model.d_model=8"], "single": [], "broken": []},
    }
    (root / "ablation.json").write_text(json.dumps(plan))
    return root


def row(report: str, variant: str, section: str) -> list[str]:
    part = report.split(f"## {section}")[1].split("\n## ")[0]
    line = next(x for x in part.splitlines() if x.startswith(f"| `{variant}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_describe_and_difference_match_the_formulas():
    s = describe([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.2) and s.n == 3
    assert describe([0.3]).std is None
    # paired: per-seed differences 0.1, 0.2, 0.1 -> mean 2/15, sd 0.057735, se sd/sqrt(3)
    d = difference({0: 0.6, 1: 0.9, 2: 1.0}, {0: 0.5, 1: 0.7, 2: 0.9})
    sd = math.sqrt(((0.1 - 2 / 15) ** 2 * 2 + (0.2 - 2 / 15) ** 2) / 2)
    assert d.paired and d.n == 3 and d.mean == pytest.approx(2 / 15)
    assert d.se == pytest.approx(sd / math.sqrt(3))
    lo, hi = d.ci95()
    assert lo == pytest.approx(2 / 15 - T2 * sd / math.sqrt(3))
    assert hi == pytest.approx(2 / 15 + T2 * sd / math.sqrt(3))
    # unpaired (different seeds): difference of means, Welch standard error
    u = difference({0: 1.0, 1: 2.0}, {5: 0.0, 6: 2.0, 7: 4.0})
    assert not u.paired and u.mean == pytest.approx(-0.5) and u.seeds == "2 vs 3"
    assert u.se == pytest.approx(math.sqrt(0.5 / 2 + 4.0 / 3))
    assert difference({0: 1.0}, {0: 0.5}).se is None  # one seed: no spread


def test_report_table_statistics(ablation_dir):
    report = write_report(ablation_dir).read_text()
    base = row(report, "base", "Results")
    assert base[:3] == ["`base`", "3", "70.00 ± 20.00"]  # exact acc over seeds, in %
    assert base[3] == "85.00 ± 10.00"  # token acc = (1 + exact) / 2
    assert base[4] == "0.5 ± 0.1"  # final loss 0.4, 0.5, 0.6
    assert base[5] == "2 ± 0"  # mean halting steps of (1, 2, 2, 3)
    assert base[6] == base[7] == "1,000"  # parameters; dense: active = all
    assert base[8] == "3.0 ± 0.0" and base[9] == "200 ± 0"  # wall time, median samples/s
    single = row(report, "single", "Results")
    assert single[1] == "1" and single[2] == "25.00 ± n/a"
    better = row(report, "better", "Difference from `base`")
    assert better[1:4] == ["3", "paired", "+13.33 ± 3.33"]
    lo, hi = 2 / 15 - T2 * 0.057735 / math.sqrt(3), 2 / 15 + T2 * 0.057735 / math.sqrt(3)
    assert better[4] == f"[{100 * lo:.2f}, {100 * hi:.2f}]"
    assert better[10] == "-1 ± 0"  # halting steps 1.5 vs 2
    assert row(report, "single", "Difference from `base`")[3].endswith("± n/a")
    trajectory = row(report, "base", "Training loss")
    assert trajectory[2:] == ["2 ± 0", "0.5 ± 0.1", "0.5 ± 0.1", "75.00 ± 5.00"]
    # the incomplete run is listed but counted nowhere
    assert "`broken/seed0` | incomplete" in report
    assert row(report, "broken", "Results")[1] == "0"
    assert "runs complete: 7 of 12" in report


def test_plots_are_real_pngs(ablation_dir):
    write_report(ablation_dir)
    plots = {p.name: p.read_bytes() for p in (ablation_dir / "plots").glob("*.png")}
    # nothing routed; no FLOPs logged here
    assert set(plots) == {"loss.png", "accuracy.png", "halting.png", "accuracy_halting.png"}
    for data in plots.values():
        assert data.startswith(PNG) and len(data) > 10_000
    report = (ablation_dir / "report.md").read_text()
    assert "![halting](plots/halting.png)" in report


def test_expert_utilisation_plot_for_routed_variants(ablation_dir):
    shares = {"ffn/expert_util/0": 0.7, "ffn/expert_util/1": 0.3}
    logged = {"experts_per_token": 1.5, "dead_experts": 1.0, **shares}
    run = make_run(ablation_dir, "routed", 0, exact=0.5, loss=0.5, **logged)
    routing = {"blocks.0.ffn.router": {"num_experts": 2, "utilisation": [0.6, 0.4]}}
    (run / "active_params.json").write_text(
        json.dumps({"active_parameters": 800, "method": "routed", "routing": routing})
    )
    plan = json.loads((ablation_dir / "ablation.json").read_text())
    plan["variants"]["routed"] = []
    (ablation_dir / "ablation.json").write_text(json.dumps(plan))
    report = write_report(ablation_dir).read_text()
    data = (ablation_dir / "plots" / "experts.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    assert row(report, "routed", "Results")[7] == "800"
    assert "`routed`: routed" in report


def test_wall_time_adds_up_resumed_segments():
    records = [{"elapsed_s": t} for t in (1.0, 2.0, 3.0, 0.5, 1.5)] + [{"step": 9}]
    assert training_seconds(records) == pytest.approx(4.5)


def test_report_and_compare_commands(ablation_dir, capsys):
    assert main(["report", str(ablation_dir)]) == 0
    assert (ablation_dir / "report.md").exists()
    assert capsys.readouterr().out.startswith("report: ")
    runs = [str(ablation_dir / "base" / "seed0"), str(ablation_dir / "broken" / "seed0")]
    assert main(["compare", *runs]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | status | steps | exact acc (%)")
    assert out[2].startswith(f"| `{runs[0]}` | finished | 30 | 50.00 |")
    assert f"| `{runs[1]}` | incomplete |" in out[3]
    assert main(["compare", str(ablation_dir)]) == 2  # not a run directory: bad input
    assert summarize_run(ablation_dir / "single" / "seed0").values["exact_acc"] == 0.25


def spending_run(root, variant, seed, *, samples, flops, raw, ema, stopped="epochs"):
    """A finished run that logged what it spent and evaluated raw and EMA weights."""
    run = make_run(root, variant, seed, exact=ema, loss=0.5)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records[0].update(samples=samples / 3, flops=flops / 3, epoch=samples / 3 / 100)
    records[-1].update({"samples": samples, "flops": flops, "epoch": samples / 100,
                        "eval/raw/exact_acc": raw, "eval/ema/exact_acc": ema,
                        "stopped": stopped})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_states_budget_spent_and_both_weight_sets(tmp_path):
    root = tmp_path / "abl"
    for seed in range(2):
        spending_run(root, "trm", seed, samples=1000 + 10 * seed, flops=2e12, raw=0.4, ema=0.6)
        spending_run(root, "other", seed, samples=1000, flops=1e12 * (1 + seed), raw=0.5, ema=0.3)
    plan = {"name": "b", "baseline": "trm", "seeds": [0, 1], "budget_text": "10 epochs",
            "variants": {"trm": [], "other": []}}  # fmt: skip
    (root / "ablation.json").write_text(json.dumps(plan))
    report = write_report(root).read_text()
    # optimizer steps, samples (mean ± std), epochs, FLOPs, and the limit that ended the runs
    assert row(report, "trm", "Budget spent")[1:] == [
        "2", "30 ± 0", "1,005 ± 7", "10.05 ± 0.071", "2e+12 ± 0", "epochs"
    ]  # fmt: skip
    assert (
        row(report, "other", "Budget spent")[5] == "1.5e+12 ± 7.07e+11"
    )  # std of 1e12, 2e12: 0.7071e12
    results = report.split("## Results")[1].split("\n## ")[0]
    assert "exact acc, raw weights (%)" in results and "exact acc, EMA weights (%)" in results
    assert row(report, "other", "Results")[2:5] == ["30.00 ± 0.00", "50.00 ± 0.00", "30.00 ± 0.00"]
    assert (root / "plots" / "accuracy_flops.png").read_bytes().startswith(PNG)


def test_intervals_of_accuracy_differences_stay_within_what_can_occur(tmp_path):
    """Baseline 0.9, 0.95, 1.0 exact; a variant at 0: the paired t-interval
    -0.95 -+ T2 * 0.05 / sqrt(3) reaches below -100 pp and is cut there."""
    root = tmp_path / "abl"
    for seed, exact in enumerate([0.9, 0.95, 1.0]):
        make_run(root, "base", seed, exact=exact, loss=0.4)
        make_run(root, "zero", seed, exact=0.0, loss=1.0)
    plan = {"name": "synthetic", "baseline": "base", "seeds": [0, 1, 2],
            "budget_text": "30 optimizer steps per run", "variants": {"base": [], "zero": []}}  # fmt: skip
    (root / "ablation.json").write_text(json.dumps(plan))
    half = T2 * 0.05 / math.sqrt(3)
    assert -0.95 - half < -1.0 < -0.95 + half  # the uncut interval does pass -100 pp
    zero = row(write_report(root).read_text(), "zero", "Difference from `base`")
    assert zero[3] == "-95.00 ± 2.89"
    assert zero[4] == f"[-100.00, {100 * (-0.95 + half):.2f}]"


def test_every_pair_reads_exact_first_then_token(tmp_path):
    """Three variants over seeds 0-2. a - b exact: 0.3, 0.2, 0.4 -> mean 0.3, sd 0.1, paired
    interval 0.3 -+ T2 * 0.1 / sqrt(3) (excludes 0: a better). b and c are both 0 exact;
    their token accuracy ((1 + exact) / 2 in make_run) is then equal too, so neither wins."""
    root = tmp_path / "abl"
    for seed, (a, b) in enumerate([(0.3, 0.0), (0.2, 0.0), (0.4, 0.0)]):
        make_run(root, "a", seed, exact=a, loss=0.4)
        make_run(root, "b", seed, exact=b, loss=0.5)
        make_run(root, "c", seed, exact=0.0, loss=0.6)
    plan = {"name": "synthetic", "baseline": "a", "seeds": [0, 1, 2],
            "budget_text": "30 optimizer steps per run", "variants": {"a": [], "b": [], "c": []}}  # fmt: skip
    (root / "ablation.json").write_text(json.dumps(plan))
    report = write_report(root).read_text()
    half = T2 * 0.1 / math.sqrt(3)
    pairs = report.split("## Every pair")[1].split("\n## ")[0]
    lines = {tuple(c.strip() for c in x.strip("|").split("|")[:2]): x for x in pairs.splitlines()
             if x.startswith("| `")}  # fmt: skip
    ab = [c.strip() for c in lines[("`a`", "`b`")].strip("|").split("|")]
    assert ab[3] == f"+30.00 ± {100 * 0.1 / math.sqrt(3):.2f}"
    assert ab[4] == f"[{100 * (0.3 - half):.2f}, {100 * (0.3 + half):.2f}]"
    assert ab[-3] == "`a` better (exact)"  # unadjusted
    # Holm over the 3 pairs: a-b and a-c have t = 0.3 / (0.1 / sqrt 3) = sqrt 27 on 2 df, whose
    # two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(27 / 29) = 0.035099; b-c: p = 1. Sorted
    # 0.0351, 0.0351, 1 times 3, 2, 1: 0.1053, 0.0702 -> 0.1053, 1. Token accuracy differs by
    # half as much with the same t: the same p. After adjustment nothing is decided.
    p = 3 * (1 - math.sqrt(27 / 29))
    assert ab[-2] == f"{p:.3f}" == "0.105"
    assert ab[-1] == "exact: p (Holm) >= 0.05; token: p (Holm) >= 0.05"
    bc = [c.strip() for c in lines[("`b`", "`c`")].strip("|").split("|")]
    assert bc[-3] == "exact: both 0%; token: CI includes 0"
    assert "Student's t over seeds only" in pairs and "Holm-adjusted across 3 comparisons" in pairs
    assert set(lines) == {("`a`", "`b`"), ("`a`", "`c`"), ("`b`", "`c`")}


def test_pair_verdict_reads_token_accuracy_when_exact_cannot_decide():
    from ponderkit.lab.report import pair_verdict
    from ponderkit.lab.stats import Delta

    zero = Delta(0.0, 0.0, 3, 3, True, 2)
    up = Delta(0.10, 0.01, 3, 3, True, 2)  # interval 0.10 -+ 0.043: above 0
    wide = Delta(0.05, 0.05, 3, 3, True, 2)  # interval includes 0
    assert pair_verdict("x", "y", zero, up) == "exact: both 0%; `x` higher token acc"
    assert pair_verdict("x", "y", zero, Delta(-0.1, 0.01, 3, 3, True, 2)).endswith(
        "`y` higher token acc"
    )
    assert pair_verdict("x", "y", wide, wide) == "exact: CI includes 0; token: CI includes 0"
    assert pair_verdict("x", "y", Delta(-0.2, 0.01, 3, 3, True, 2), wide) == "`y` better (exact)"
    assert pair_verdict("x", "y", Delta(0.2, None, 1, 1, True), up) == "no interval (one seed)"


def test_epoch_mean_losses_by_hand():
    """Losses logged at epochs 0.2, 0.6 | 1.0, 1.4 | 2.0, 2.04: a budget of 2 epochs stopped a
    step past its end, so the last record joins epoch 1; a run short of one epoch has none."""
    from ponderkit.lab.run_analysis import epoch_mean_losses

    records = [
        {"step": 10, "loss": 2.0, "epoch": 0.2},
        {"step": 20, "loss": 1.0, "epoch": 0.6},
        {"step": 25, "eval/exact_acc": 0.0},  # no loss: not counted
        {"step": 30, "loss": 0.8, "epoch": 1.0},
        {"step": 40, "loss": 0.6, "epoch": 1.4},
        {"step": 50, "loss": 0.5, "epoch": 2.0},
        {"step": 51, "loss": 0.3, "epoch": 2.04},
    ]
    assert epoch_mean_losses(records) == pytest.approx([1.5, (0.8 + 0.6 + 0.5 + 0.3) / 4])
    assert epoch_mean_losses(records[:2]) == []
    assert epoch_mean_losses([{"step": 1, "loss": 1.0}]) == []  # no epochs logged


def test_training_loss_table_adds_epoch_means_for_runs_that_count_epochs(tmp_path):
    root = tmp_path / "abl"
    for seed in range(2):
        run = make_run(root, "base", seed, exact=0.5, loss=0.5)
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for r, epoch in zip(records, (0.5, 1.0, 2.0), strict=True):  # losses 2.0, 1.0, 0.5
            r["epoch"] = epoch
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plan = {"name": "e", "baseline": "base", "seeds": [0, 1], "budget_text": "2 epochs",
            "variants": {"base": []}}  # fmt: skip
    (root / "ablation.json").write_text(json.dumps(plan))
    report = write_report(root).read_text()
    # epoch 0: 2.0; epoch 1: 1.0 and the last record (0.5) -> 0.75; improvement (2 - 0.75) / 2
    cells = row(report, "base", "Training loss")
    assert cells[6:] == ["0.75 ± 0", "0.75 ± 0", "62.50 ± 0.00"]
    assert "last epoch's mean" in report


def test_code_line_names_every_commit_a_grid_was_trained_at(tmp_path):
    """A grid finished over sittings: runs from two commits and one without a repository."""
    root = tmp_path / "abl"
    commits = {("a", 0): "1" * 40, ("a", 1): "2" * 40, ("b", 0): "2" * 40, ("b", 1): None}
    for (variant, seed), commit in commits.items():
        run = make_run(root, variant, seed, exact=0.5, loss=0.3)
        git = {"commit": commit, "dirty": False} if commit else {}
        meta = json.loads((run / "meta.json").read_text())
        (run / "meta.json").write_text(json.dumps({**meta, "git": git}))
    report = write_report(root).read_text()
    line = next(x for x in report.splitlines() if x.startswith("- Code:"))
    assert "at 1111111111 (1 run), 2222222222 (2 runs), unknown (1 run);" in line
    for run in root.glob("*/seed*"):  # one commit: named once, no count
        (run / "meta.json").write_text(json.dumps({"seed": 0, "git": {"commit": "3" * 40}}))
    report = write_report(root).read_text()
    assert "at 3333333333; torch" in report


def with_puzzles(run, exact, step=30):
    """Per-puzzle outcomes for ``run`` as training writes them (``eval/puzzles.npz``); token
    accuracy (1 + exact) / 2 per puzzle, so the means are make_run's."""
    import numpy as np
    from ponderkit.engine.evaluate import PuzzleOutcomes, write_puzzle_outcomes

    outcomes = PuzzleOutcomes()
    outcomes.exact = np.asarray(exact, np.uint8)
    outcomes.token_acc = ((1 + outcomes.exact) / 2).astype(np.float32)
    outcomes.eval_set = "the same 64 puzzles"
    write_puzzle_outcomes(run, step, {"": outcomes})


@pytest.fixture
def no_plots(monkeypatch):
    """Reports without plots (matplotlib takes seconds; plots are tested above)."""
    monkeypatch.setattr("ponderkit.lab.report_plots.write_plots", lambda groups, out: [])


def one_puzzle_ablation(root, step=30):
    """The issue's case: seeds 0 and 1, the variant solves the baseline's 32 of 64 puzzles
    and one more, the same one in both seeds (+1.5625 pp in each)."""
    base = [1] * 32 + [0] * 32
    more = base.copy()
    more[40] = 1
    for seed in range(2):
        with_puzzles(make_run(root, "base", seed, exact=32 / 64, loss=0.5), base, step)
        with_puzzles(make_run(root, "more", seed, exact=33 / 64, loss=0.5), more, step)
    plan = {"name": "one", "baseline": "base", "seeds": [0, 1], "budget_text": "30 steps",
            "variants": {"base": [], "more": []}}  # fmt: skip
    (root / "ablation.json").write_text(json.dumps(plan))


def test_one_puzzle_in_two_seeds_is_not_a_verdict(tmp_path, no_plots):
    """Seed-only, the two identical differences give [1.56, 1.56] and "better"; over puzzles
    the one puzzle is missing from 36.5% of resamples ((63/64)^64), so the interval starts at 0
    and p is about 2 x 0.365."""
    root = tmp_path / "abl"
    one_puzzle_ablation(root)
    report = write_report(root).read_text()
    more = row(report, "more", "Difference from `base`")
    assert more[3].startswith("+1.56 ±") and more[4].startswith("[0.00, ")
    assert float(more[4].split(", ")[1].rstrip("]")) >= 3.125  # 2 puzzles of 64 or more
    assert float(more[5]) == pytest.approx(2 * (63 / 64) ** 64, abs=0.05)
    assert more[7] == "exact: p (Holm) >= 0.05; token: p (Holm) >= 0.05"
    assert (
        "95% paired bootstrap over seeds and puzzles, B=4000, Holm-adjusted across 1 comparison"
        in report
    )
    # the same run folders without their per-puzzle files: the old seed-only verdict, said so
    for npz in root.glob("*/seed*/eval/puzzles.npz"):
        npz.unlink()
    report = write_report(root).read_text()
    more = row(report, "more", "Difference from `base`")
    assert more[4] == "[1.56, 1.56]" and more[7] == "`more` better (exact)"
    assert "Student's t over seeds only" in report


def test_outcomes_of_another_step_are_not_used(tmp_path, no_plots):
    root = tmp_path / "abl"
    one_puzzle_ablation(root, step=20)  # the last evaluation logged is step 30
    problems = []
    report = write_report(root, warn=problems.append).read_text()
    assert "Student's t over seeds only" in report
    assert len(problems) == 4
    assert "outcomes of step 20, but the last evaluation logged is step 30" in problems[0]


def test_results_csv_and_json_hold_every_run_and_metric(tmp_path, no_plots):
    import csv

    root = tmp_path / "abl"
    one_puzzle_ablation(root)
    make_run(root, "more", 2, exact=0.0, loss=9.0, final=False)  # incomplete: listed, so said
    write_report(root)
    rows = list(csv.DictReader((root / "results.csv").open()))
    # what make_run logs, by hand: the last evaluation (exact, token, eval/steps -> halting
    # steps from halting.json), the loss trajectory (4), parameters (2), time, steps, speed
    complete = {"exact_acc", "token_acc", "halting_steps", "exact_acc_early_exit", "loss",
                "initial_loss", "min_loss", "loss_improvement", "parameters",
                "active_parameters", "wall_s", "steps", "samples_per_s"}  # fmt: skip
    runs = {(r["variant"], r["seed"], r["status"]) for r in rows}
    assert runs == {("base", "0", "finished"), ("base", "1", "finished"),
                    ("more", "0", "finished"), ("more", "1", "finished"),
                    ("more", "2", "incomplete")}  # fmt: skip
    for variant, seed, _ in runs - {("more", "2", "incomplete")}:
        metrics = {r["metric"] for r in rows if (r["variant"], r["seed"]) == (variant, seed)}
        assert metrics == complete
    exact = {
        (r["variant"], r["seed"]): float(r["value"]) for r in rows if r["metric"] == "exact_acc"
    }
    assert exact[("base", "0")] == 0.5 and exact[("more", "1")] == 33 / 64
    assert all(r["steps"] == "30.0" for r in rows)
    results = json.loads((root / "results.json").read_text())
    assert results["rows"] == json.loads(json.dumps(results["rows"]))  # plain JSON values
    assert len(results["rows"]) == len(rows)
    (diff,) = [d for d in results["differences"] if d["metric"] == "exact_acc"]
    assert (diff["a"], diff["b"], diff["method"], diff["lo"]) == ("more", "base", "bootstrap", 0)
    assert diff["difference"] == pytest.approx(1 / 64) and diff["paired_by_puzzle"]
    assert results["pairs"] == []  # two variants: the difference above is the one pair


def test_training_saves_each_puzzles_outcome_for_the_report(sort_yaml, tmp_path, registry):
    """Two short runs of one task seed (another width, one with EMA): eval/puzzles.npz holds
    40 puzzles (batches of 16, 16, 8) whose means are the logged accuracies, for both weight
    sets where EMA is evaluated too, and the same eval-set digest, so they pair by puzzle."""
    from ponderkit.contract.experiment import load_experiment
    from ponderkit.engine.train import Trainer

    common = ["train.steps=2", "train.log_every=1", "train.eval_every=1", "task.eval_size=40",
              "train.eval_batch_size=16", "model.d_model=16", "train.batch_size=16"]  # fmt: skip
    runs = {}
    for name, extra in [("a", "callbacks=[{name: ema, decay: 0.5}]"), ("b", "model.d_model=8")]:
        cfg = load_experiment(sort_yaml, [*common, extra], registry=registry).config
        (tmp_path / name).mkdir()
        Trainer(cfg, registry, tmp_path / name, quiet=True).fit()
        runs[name] = summarize_run(tmp_path / name)
    ra, rb = runs["a"], runs["b"]
    assert set(ra.puzzles) == {"exact_acc", "token_acc", "raw_exact_acc", "raw_token_acc"}
    assert set(rb.puzzles) == {"exact_acc", "token_acc"}
    last = [r for r in ra.records if "eval/exact_acc" in r][-1]
    assert last["step"] == 2  # the file holds the last of the two evaluations
    for key, logged in [("exact_acc", "eval/exact_acc"), ("token_acc", "eval/token_acc"),
                        ("raw_token_acc", "eval/raw/token_acc")]:  # fmt: skip
        assert len(ra.puzzles[key].values) == 40
        assert ra.puzzles[key].mean == pytest.approx(last[logged], abs=1e-6)
    assert set(ra.puzzles["exact_acc"].values) <= {0.0, 1.0}
    assert ra.puzzles["exact_acc"].eval_set == rb.puzzles["exact_acc"].eval_set != ""


def test_nearest_arms_table_is_its_own_holm_family(tmp_path, no_plots):
    """``nearest: {arm: [sibling, base]}``: the arm against each, paired over seeds (no
    per-puzzle files here), p from scipy's paired t-test, Holm across the two by hand."""
    from scipy import stats as sps

    root = tmp_path / "abl"
    exact = {"base": [0.2, 0.3, 0.4], "arm": [0.5, 0.7, 0.6], "sibling": [0.45, 0.6, 0.62]}
    for variant, values in exact.items():
        for seed, e in enumerate(values):
            make_run(root, variant, seed, exact=e, loss=0.5)
    plan = {"name": "near", "baseline": "base", "seeds": [0, 1, 2], "budget_text": "30 steps",
            "variants": {v: [] for v in exact}, "nearest": {"arm": ["sibling", "base"]}}  # fmt: skip
    (root / "ablation.json").write_text(json.dumps(plan))
    report = write_report(root).read_text()
    part = report.split("## Against the nearest arms")[1].split("\n## ")[0]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in part.splitlines()
        if line.startswith("| `arm` |")
    ]
    assert [r[1] for r in rows] == ["`sibling`", "`base`"]
    p = [sps.ttest_rel(exact["arm"], exact[b]).pvalue for b in ("sibling", "base")]
    lo, hi = sorted(p)
    holm = {lo: min(1.0, 2 * lo), hi: max(min(1.0, 2 * lo), hi)}
    for r, raw, other in zip(rows, p, ("sibling", "base"), strict=True):
        mean = 100 * (sum(exact["arm"]) - sum(exact[other])) / 3
        assert r[5].startswith(f"{mean:+.2f} ±")
        assert float(r[7]) == pytest.approx(holm[raw], abs=0.0015)
    results = json.loads((root / "results.json").read_text())
    near = [d for d in results["nearest"] if d["metric"] == "exact_acc"]
    assert [d["p_holm"] for d in near] == pytest.approx([holm[x] for x in p])
