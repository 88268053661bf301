"""Ablation reports (``report.md``): per-variant statistics over seeds (``stats.py``),
differences from the baseline, the runs behind them, and plots (``report_plots.py``); and
``compare``, a table of any run directories. The number of seeds is always shown."""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..engine.runs import write_json_atomic, write_text_atomic
from .report_ladder import ladder_and_tune_plots, ladder_and_tune_sections
from .run_analysis import DENSE, RunSummary, read_json, summarize_run
from .stats import (
    BOOTSTRAP_B,
    Delta,
    Interval,
    Puzzles,
    Stat,
    describe,
    difference,
    holm,
    seeds_and_puzzles,
    t_interval,
)


# -- formatting ---------------------------------------------------------------------------------
def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def num(x: float) -> str:
    return f"{x:.4g}"


def count(x: float) -> str:
    return f"{x:,.0f}"


def params(x: float) -> str:
    return f"{x:,.0f}"


def fmt_stat(stat: Stat | None, f: Callable[[float], str]) -> str:
    if stat is None:
        return "–"
    if f is params and not stat.std:  # parameter counts do not vary with the seed
        return params(stat.mean)
    return f"{f(stat.mean)} ± {_spread(stat.std, f)}"


def fmt_delta(delta: Delta | None, f: Callable[[float], str]) -> str:
    if delta is None:
        return "–"
    sign = "+" if delta.mean >= 0 else "-"
    return f"{sign}{f(abs(delta.mean))} ± {_spread(delta.se, f)}"


def _spread(x: float | None, f: Callable[[float], str]) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2g}" if f is num else f(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# the main table: (key, header, formatter)
COLUMNS = (
    ("exact_acc", "exact acc (%)", pct),
    ("token_acc", "token acc (%)", pct),
    ("loss", "final loss", num),
    ("halting_steps", "halting steps", num),
    ("parameters", "params", params),
    ("active_parameters", "active params/token", params),
    ("wall_s", "wall time (s)", lambda x: f"{x:.1f}"),
    ("samples_per_s", "samples/s", count),
)
DELTAS = ("exact_acc", "token_acc", "loss", "halting_steps", "wall_s")
# shown beside exact acc when a run evaluated both weight sets (an EMA callback)
WEIGHT_COLUMNS = (
    ("raw_exact_acc", "exact acc, raw weights (%)", pct),
    ("ema_exact_acc", "exact acc, EMA weights (%)", pct),
)


def flops_text(x: float) -> str:
    return f"{x:.3g}"


def columns(done: dict[str, list[RunSummary]]) -> tuple:
    """The main table's columns: raw and EMA exact accuracy after exact acc where any run has
    them (a short budget would otherwise rank variants by how far their averages lag)."""
    present = {k for runs in done.values() for r in runs for k in r.values}
    extra = tuple(c for c in WEIGHT_COLUMNS if c[0] in present)
    return COLUMNS[:1] + extra + COLUMNS[1:]


def by_seed(runs: Sequence[RunSummary], key: str) -> dict[int, float]:
    return {
        int(r.meta.get("seed", i)): r.values[key] for i, r in enumerate(runs) if key in r.values
    }


def stat(runs: Sequence[RunSummary], key: str) -> Stat | None:
    return describe(list(by_seed(runs, key).values()))


def puzzles_by_seed(runs: Sequence[RunSummary], key: str) -> dict[int, Puzzles] | None:
    """Each run's per-puzzle outcomes of ``key`` by seed; None unless every run has them."""
    out = {int(r.meta.get("seed", i)): r.puzzles.get(key) for i, r in enumerate(runs)}
    return out if out and all(p is not None for p in out.values()) else None


def compare(
    runs: Sequence[RunSummary], reference: Sequence[RunSummary], key: str
) -> Interval | None:
    """runs - reference on ``key``: the bootstrap over seeds and puzzles where every run of
    both saved per-puzzle outcomes, else Student's t over seeds (method ``t``)."""
    a, b = puzzles_by_seed(runs, key), puzzles_by_seed(reference, key)
    if a is not None and b is not None:
        return seeds_and_puzzles(a, b)
    delta = difference(by_seed(runs, key), by_seed(reference, key))
    return t_interval(delta) if delta is not None else None


@attrs.frozen
class Comparison:
    """One row of a differences table: ``a`` - ``b`` on ``metric``, with the p-value adjusted
    (Holm) across its table's comparisons of that metric."""

    a: str
    b: str
    metric: str
    interval: Interval | None
    p_holm: float | None

    def as_dict(self) -> dict[str, Any]:
        iv = self.interval
        return {
            "a": self.a, "b": self.b, "metric": self.metric,
            "difference": iv.mean if iv else None, "lo": iv.lo if iv else None,
            "hi": iv.hi if iv else None, "p": iv.p if iv else None, "p_holm": self.p_holm,
            "method": iv.method if iv else None, "seeds": iv.seeds if iv else "0",
            "paired_by_seed": iv.paired if iv else None,
            "paired_by_puzzle": iv.puzzles_paired if iv else None,
        }  # fmt: skip


def comparisons(
    pairs: Sequence[tuple[str, str]], done: dict[str, list[RunSummary]]
) -> dict[tuple[str, str, str], Comparison]:
    """Exact and token accuracy of every pair, each metric's p-values Holm-adjusted across
    the pairs (one family per metric and table)."""
    out: dict[tuple[str, str, str], Comparison] = {}
    for key in DELTAS[:2]:
        intervals = [compare(done[a], done[b], key) for a, b in pairs]
        usable = [iv.p if iv is not None and not iv.one_seed else None for iv in intervals]
        for (a, b), iv, p in zip(pairs, intervals, holm(usable), strict=True):
            out[(a, b, key)] = Comparison(a, b, key, iv, p)
    return out


def method_line(found: Sequence[Comparison]) -> str:
    """How the intervals of a table were computed, and across how many comparisons the
    verdicts are adjusted."""
    ivs = [c.interval for c in found if c.interval is not None]
    m = sum(c.p_holm is not None for c in found if c.metric == "exact_acc")
    holm_text = f"Holm-adjusted across {m} comparison{'s' if m != 1 else ''}"
    boot = [iv for iv in ivs if iv.method == "bootstrap"]
    if ivs and len(boot) == len(ivs):
        return (
            f"95% paired bootstrap over seeds and puzzles, B={BOOTSTRAP_B}, {holm_text} (the "
            "interval is widened to Student's t over seeds where that is wider; see "
            "docs/intervals.md)"
        )
    seed_only = (
        "95% Student's t over seeds only (seed-only: runs without per-puzzle outcomes, "
        "`eval/puzzles.npz`, leave out the evaluation set's noise)"
    )
    if boot:
        return (
            f"95% paired bootstrap over seeds and puzzles, B={BOOTSTRAP_B}, where every run of "
            f"both arms saved per-puzzle outcomes, else {seed_only}; {holm_text}"
        )
    return f"{seed_only}; {holm_text}"


def verdict(
    a: str, b: str, exact: Comparison | None, token: Comparison | None, adjusted: bool
) -> str:
    """:func:`pair_verdict` on the 95% intervals, or on the Holm-adjusted p-values (< 0.05)."""
    if not adjusted:
        return pair_verdict(a, b, exact and exact.interval, token and token.interval)
    return pair_verdict(
        a,
        b,
        exact and exact.interval,
        token and token.interval,
        p_exact=exact.p_holm if exact else None,
        p_token=token.p_holm if token else None,
    )


# -- the ablation report ------------------------------------------------------------------------
def load_groups(
    ablation_dir: Path, warn: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], dict[str, list[RunSummary]]]:
    """The plan (``ablation.json``) and every variant's run summaries, complete or not."""
    plan = read_json(ablation_dir / "ablation.json")
    if not plan:  # no plan: read the layout <variant>/seed<k>/
        names = sorted(p.parent.parent.name for p in ablation_dir.glob("*/seed*/config.yaml"))
        variants = list(dict.fromkeys(names))
        plan = {"name": ablation_dir.name, "variants": {v: [] for v in variants}, "seeds": []}
        plan["baseline"] = "base" if "base" in variants else (variants[0] if variants else "")
    groups = {}
    for variant in plan["variants"]:
        dirs = sorted((ablation_dir / variant).glob("seed*"), key=lambda p: p.name)
        groups[variant] = [summarize_run(d) for d in dirs if (d / "config.yaml").exists()]
        for run in groups[variant]:
            for problem in run.problems if warn else ():
                warn(problem)
    return plan, groups


def write_report(
    ablation_dir: str | Path, warn: Callable[[str], None] | None = None, registry: Any = None
) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for the ablation in ``ablation_dir``; with the
    plugins' ``registry``, also one trace sheet per variant where the task shows grids."""
    from .report_plots import write_plots

    ablation_dir = Path(ablation_dir)
    plan, groups = load_groups(ablation_dir, warn)
    done = {v: [r for r in runs if r.complete] for v, runs in groups.items()}
    plots = write_plots(done, ablation_dir / "plots")
    plots += ladder_and_tune_plots(plan, done, ablation_dir / "plots", compare)
    if registry is not None and plots:  # plots: matplotlib is here
        from .trace import variant_sheets

        plots += variant_sheets(done, registry, ablation_dir / "plots", warn)
    found = all_comparisons(done, plan.get("baseline", ""), plan.get("nearest"))
    text = render(plan, groups, [p.relative_to(ablation_dir) for p in plots], found)
    path = ablation_dir / "report.md"
    write_text_atomic(path, text)
    write_results(ablation_dir, plan, groups, found)
    return path


def all_comparisons(
    done: dict[str, list[RunSummary]], base: str, nearest: dict[str, Any] | None = None
) -> dict[str, dict[tuple[str, str, str], Comparison]]:
    """The differences from the baseline, from each arm's ``nearest`` siblings (the ablation
    file's ``nearest:``, one Holm family) and every pair, computed once for the report and
    ``results.json``."""
    names = [v for v, runs in done.items() if runs]
    with_base = [(v, base) for v in names if v != base] if done.get(base) else []
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    siblings = [
        (v, s)
        for v, listed in (nearest or {}).items()
        for s in ([listed] if isinstance(listed, str) else listed)
        if done.get(v) and done.get(s)
    ]
    return {
        "baseline": comparisons(with_base, done),
        "nearest": comparisons(siblings, done),
        "pairs": comparisons(pairs, done) if len(names) >= 3 else {},
    }


RESULT_FIELDS = ("variant", "seed", "run", "status", "metric", "value", "steps", "samples",
                 "flops")  # fmt: skip


def write_results(
    ablation_dir: Path,
    plan: dict[str, Any],
    groups: dict[str, list[RunSummary]],
    found: dict[str, dict[tuple[str, str, str], Comparison]],
) -> None:
    """``results.csv``: one row per run and metric (tidy), with what the run spent beside;
    ``results.json``: the same rows and every comparison of the report with its interval."""
    rows = []
    for variant, runs in groups.items():
        for i, run in enumerate(runs):
            spent = {k: run.values.get(k) for k in ("steps", "samples", "flops")}
            for metric, value in sorted(run.values.items()):
                rows.append({
                    "variant": variant, "seed": int(run.meta.get("seed", i)),
                    "run": f"{variant}/{run.path.name}", "status": run.status,
                    "metric": metric, "value": value, **spent,
                })  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, RESULT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(ablation_dir / "results.csv", buffer.getvalue())
    results = {
        "name": plan.get("name", ""),
        "baseline": plan.get("baseline", ""),
        "seeds": plan.get("seeds", []),
        "rows": rows,
        "differences": [c.as_dict() for c in found["baseline"].values()],
        "nearest": [c.as_dict() for c in found.get("nearest", {}).values()],
        "pairs": [c.as_dict() for c in found["pairs"].values()],
        "method": {
            "differences": method_line(list(found["baseline"].values())),
            "nearest": method_line(list(found.get("nearest", {}).values())),
            "pairs": method_line(list(found["pairs"].values())),
        },
    }
    write_json_atomic(ablation_dir / "results.json", results)


def code_versions(runs: list[RunSummary]) -> str:
    """The commit the runs were trained at; with several (a grid finished over sittings), each
    with its number of runs, in order of first appearance."""
    counts: dict[str, int] = {}
    for run in runs:
        git = run.meta.get("git") or {}
        commit = (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
        counts[commit] = counts.get(commit, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{c} ({n} run{'s' if n > 1 else ''})" for c, n in counts.items())


def render(
    plan: dict[str, Any],
    groups: dict[str, list[RunSummary]],
    plots: list[Path],
    found: dict[str, dict[tuple[str, str, str], Comparison]] | None = None,
) -> str:
    done = {v: [r for r in runs if r.complete] for v, runs in groups.items()}
    base = plan.get("baseline", "")
    found = found if found is not None else all_comparisons(done, base, plan.get("nearest"))
    seeds = plan.get("seeds") or sorted(
        {int(r.meta.get("seed", 0)) for g in done.values() for r in g}
    )
    total = sum(len(g) for g in done.values())
    planned = len(plan["variants"]) * len(seeds) if plan.get("seeds") else total
    any_run = next((r for g in done.values() for r in g), None)
    out = [f"# Ablation: {plan.get('name', '')}", ""]
    if plan.get("description"):
        out += [plan["description"].strip(), ""]
    out += [
        f"- Base experiment: `{plan.get('base', '?')}`; baseline variant: `{base}`",
        f"- Budget: {plan.get('budget_text', 'as each config says')}, the same for every variant",
        f"- Seeds: {', '.join(map(str, seeds))}; runs complete: {total} of {planned}",
    ]
    if plan.get("steps_per_variant"):
        steps = ", ".join(f"{v} {s}" for v, s in plan["steps_per_variant"].items())
        out.append(f"- Steps from the FLOPs budget: {steps}")
    if any_run is not None:
        commit = code_versions([r for g in done.values() for r in g])
        out.append(
            f"- Code: ponderkit {any_run.meta.get('ponderkit', '?')} at {commit}; torch "
            f"{any_run.meta.get('torch', '?')}; device {any_run.meta.get('device', '?')}"
        )
    out += [
        "",
        "## Results",
        "",
        "Mean ± sample std over seeds (n/a with one seed); n = seeds.",
        "",
    ]
    shown = columns(done)
    rows = [
        [f"`{v}`", str(len(runs)), *(fmt_stat(stat(runs, k), f) for k, _, f in shown)]
        for v, runs in done.items()
    ]
    out += [table(["variant", "n", *(h for _, h, _ in shown)], rows), ""]
    if any(c[0] == "raw_exact_acc" for c in shown):
        out += ["exact acc is the evaluation weights' (EMA's where a run averages them); the "
                "raw and EMA columns give both weight sets, from the same last evaluation.", ""]  # fmt: skip
    out += _spent(done, plan)
    out += _differences(done, base, found["baseline"])
    out += _nearest(done, found.get("nearest", {})) + _pairs(done, found["pairs"])
    out += ladder_and_tune_sections(plan, done, compare)  # report_ladder
    out += _against_reference(done, plan) + _free_running(done, base)
    out += _trajectory(done) + _halting(done)
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.as_posix()})" for p in plots] + [""]
    elif total and importlib.util.find_spec("matplotlib") is None:
        out += ["## Plots", "", "matplotlib is not installed here: no plots (install it and run "
                "`ponderkit report DIR`).", ""]  # fmt: skip
    out += _variants(plan) + _arms(plan) + _runs(groups) + _method(done)
    return "\n".join(out).rstrip() + "\n"


def bound_by(run: RunSummary) -> str:
    """What ended a run: its budget's limit (``steps``, ``epochs``) or ``time limit``."""
    last = run.records[-1] if run.records else {}
    return str(last.get("stopped") or ("steps" if run.complete else "–"))


def _spent(done: dict[str, list[RunSummary]], plan: dict[str, Any]) -> list[str]:
    """Per variant: optimizer steps, fresh samples seen (and epochs of them), training FLOPs
    spent, and which limit ended the runs."""
    rows = []
    for v, runs in done.items():
        bounds = sorted({bound_by(r) for r in runs})
        rows.append([
            f"`{v}`", str(len(runs)), fmt_stat(stat(runs, "steps"), count),
            fmt_stat(stat(runs, "samples"), count), fmt_stat(stat(runs, "epoch"), num),
            fmt_stat(stat(runs, "flops"), flops_text), ", ".join(bounds) or "–",
        ])  # fmt: skip
    headers = ["variant", "n", "optimizer steps", "samples seen", "epochs", "training FLOPs",
               "bound by"]  # fmt: skip
    budget = plan.get("budget_text", "as each config says")
    return [
        "## Budget spent",
        "",
        f"Budget: {budget}. Mean ± std over seeds of what each run spent: optimizer steps; "
        "fresh training samples drawn (under deep supervision a sample enters a batch slot "
        "only when the previous one halted, so steps and samples part); epochs = samples / "
        "training-set size; FLOPs counted by torch's FlopCounterMode (forward and backward, "
        "measured at the first step and every `train.flops_every` steps). `bound by`: the "
        "limit that ended the runs.",
        "",
        table(headers, rows),
        "",
    ]


# metric of a ``reference:`` -> (name in the table, formatter, unit of its differences)
REFERENCE_LABELS = {
    "exact_acc": ("exact acc (%)", pct, "pp"),
    "token_acc": ("token acc (%)", pct, "pp"),
    "loss": ("final loss", num, ""),
    "initial_loss": ("initial loss", num, ""),
    "min_loss": ("min loss", num, ""),
    "loss_improvement": ("loss improvement (%)", pct, "pp"),
    "last_epoch_loss": ("last epoch's mean loss", num, ""),
    "min_epoch_loss": ("lowest epoch mean loss", num, ""),
    "epoch_loss_improvement": ("improvement to the last epoch's mean (%)", pct, "pp"),
    "halting_steps": ("halting steps", num, ""),
}


def reference_verdict(ours: Delta | None, theirs: float, bounded: bool = False) -> tuple:
    """(95% interval, verdict) of our difference from the baseline read beside the source's:
    ``agrees`` (interval excludes 0, same sign), ``disagrees`` (excludes 0, opposite sign),
    ``interval includes 0``; ``n/a`` without an interval (one seed)."""
    ci = ours.ci95() if ours is not None else None
    if bounded:
        ci = _possible(ci)
    if ci is None:
        return None, "n/a (one seed: no interval)"
    if ci[0] <= 0 <= ci[1]:
        return ci, "interval includes 0"
    if theirs == 0:
        return ci, "source shows no difference"
    return ci, "agrees" if (ours.mean > 0) == (theirs > 0) else "disagrees"


def _against_reference(done: dict[str, list[RunSummary]], plan: dict[str, Any]) -> list[str]:
    ref = plan.get("reference") or {}
    figures = ref.get("values") or {}
    base = plan.get("baseline", "")
    if not figures or base not in figures:
        return []
    metrics = [m for m in REFERENCE_LABELS if any(m in f for f in figures.values())]
    rows = []
    for metric in metrics:
        label, f, unit = REFERENCE_LABELS[metric]
        if metric not in figures[base]:
            continue
        theirs_base = figures[base][metric]
        ours_base = done.get(base) or []
        rows.append([f"`{base}` (baseline)", label, f(theirs_base), "",
                     fmt_stat(stat(ours_base, metric), f), "", "", ""])  # fmt: skip
        for variant, values in figures.items():
            if variant == base or metric not in values:
                continue
            theirs = values[metric] - theirs_base
            runs = done.get(variant) or []
            ours = (compare(runs, ours_base, metric) if metric in DELTAS[:2]
                    else difference(by_seed(runs, metric), by_seed(ours_base, metric)))  # fmt: skip
            ci, verdict = reference_verdict(ours, theirs, bounded=unit == "pp")
            interval = f"[{f(ci[0])}, {f(ci[1])}]" if ci else "n/a"
            rows.append(
                [
                    f"`{variant}`",
                    label,
                    f(values[metric]),
                    _signed(theirs, f),
                    fmt_stat(stat(runs, metric), f),
                    fmt_delta(ours, f),
                    interval,
                    verdict if runs else "not run",
                ]  # fmt: skip
            )
    if not rows:
        return []
    source = ref.get("source") or "the ablation file's reference"
    headers = ["variant", "metric", "source", "source Δ", "ours (mean ± std)", "our Δ ± se",
               "our 95% CI", "verdict"]  # fmt: skip
    return [
        "## Against the reference",
        "",
        f"Source: {source}. Δ = variant − baseline, in each. Verdict: `agrees` when our 95% "
        "interval excludes 0 on the source's side, `disagrees` when it excludes 0 on the other "
        "side, else `interval includes 0` (this budget and these seeds cannot tell).",
        "",
        table(headers, rows),
        "",
    ]


def _signed(x: float, f: Callable[[float], str]) -> str:
    return ("+" if x >= 0 else "-") + f(abs(x))


def _possible(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    """A 95% interval of a difference of two accuracies, cut to the differences that can
    occur (-1..1): a t-interval over few seeds can reach past them."""
    return None if ci is None else (max(ci[0], -1.0), min(ci[1], 1.0))


def _free_running(done: dict[str, list[RunSummary]], base: str) -> list[str]:
    """Serialized tasks: accuracy of the outputs the model generated itself (greedy, KV cache)
    beside the teacher-forced ones, and the change in free-running exact accuracy."""
    if not any("free_exact_acc" in r.values for runs in done.values() for r in runs):
        return []
    ref = done.get(base) or []
    rows = []
    for v, runs in done.items():
        delta = difference(by_seed(runs, "free_exact_acc"), by_seed(ref, "free_exact_acc"))
        ci = _possible(delta.ci95()) if delta and v != base else None
        rows.append(
            [
                f"`{v}`",
                str(len(runs)),
                fmt_stat(stat(runs, "token_acc"), pct),
                fmt_stat(stat(runs, "free_token_acc"), pct),
                fmt_stat(stat(runs, "free_exact_acc"), pct),
                "–" if v == base else fmt_delta(delta, pct),
                f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else "–" if v == base else "n/a",
            ]
        )
    headers = ["variant", "n", "teacher-forced token acc (%)", "free-running token acc (%)",
               "free-running exact acc (%)", f"Δ free exact vs `{base}` (pp)", "95% CI"]  # fmt: skip
    return [
        "## Free-running (generated) accuracy",
        "",
        "The held-out outputs generated greedily from `[input, separator]` (KV cache), against "
        "the teacher-forced accuracy (every position given the true prefix). Mean ± std over "
        "seeds; Δ as above.",
        "",
        table(headers, rows),
        "",
    ]


def _differences(
    done: dict[str, list[RunSummary]], base: str, found: dict[tuple[str, str, str], Comparison]
) -> list[str]:
    ref = done.get(base) or []
    if not ref:
        return [f"No finished run of the baseline `{base}`: no differences.", ""]
    rows = []
    for v, runs in done.items():
        if v == base or not runs:
            continue
        deltas = {k: difference(by_seed(runs, k), by_seed(ref, k)) for k in DELTAS[2:]}
        exact, token = found.get((v, base, "exact_acc")), found.get((v, base, "token_acc"))
        iv = exact.interval if exact else None
        ci = _possible(iv.ci95()) if iv else None
        rows.append(
            [
                f"`{v}`",
                iv.seeds if iv else "0",
                "paired" if iv and iv.paired else "unpaired",
                fmt_delta(iv, pct),
                f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else "n/a",
                _p(iv.p if iv and not iv.one_seed else None),
                _p(exact.p_holm if exact else None),
                verdict(v, base, exact, token, adjusted=True),
                fmt_delta(token.interval if token else None, pct),
                fmt_delta(deltas["loss"], num),
                fmt_delta(deltas["halting_steps"], num),
                fmt_delta(deltas["wall_s"], lambda x: f"{x:.1f}"),
            ]
        )
    headers = ["variant", "n", "seeds", "Δ exact acc (pp)", "95% CI", "p", "p (Holm)",
               "verdict (Holm)", "Δ token acc (pp)", "Δ loss", "Δ halting steps",
               "Δ wall time (s)"]  # fmt: skip
    return [
        f"## Difference from `{base}`",
        "",
        f"Intervals: {method_line(list(found.values()))}. Δ = variant − baseline, ± its "
        "standard error (the bootstrap's standard deviation, or sd/√n of paired per-seed "
        "differences, Welch when the seeds differ). The 95% CI is cut to [-100, 100] pp; n/a "
        "with one seed. p: two-sided, of Δ = 0; the verdict reads the Holm-adjusted p (< 0.05) "
        "of exact accuracy, then of token accuracy. pp = percentage points.",
        "",
        table(headers, rows) if rows else "(no other variant finished)",
        "",
    ]


def _nearest(
    done: dict[str, list[RunSummary]], found: dict[tuple[str, str, str], Comparison]
) -> list[str]:
    """``nearest:``: each arm against the siblings named for it, one Holm family."""
    pairs = list(dict.fromkeys((a, b) for a, b, _ in found))
    if not pairs:
        return []
    rows = []
    for a, b in pairs:
        exact, token = found[(a, b, "exact_acc")], found[(a, b, "token_acc")]
        iv = exact.interval
        ci = _possible(iv.ci95()) if iv else None
        rows.append([
            f"`{a}`", f"`{b}`", iv.seeds if iv else "0", pct(_mean(done[a])), pct(_mean(done[b])),
            fmt_delta(iv, pct), f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else "n/a",
            _p(exact.p_holm), verdict(a, b, exact, token, adjusted=True),
            fmt_delta(token.interval, pct),
        ])  # fmt: skip
    headers = ["arm", "against", "n", "arm exact (%)", "against exact (%)", "Δ exact acc (pp)",
               "95% CI", "p (Holm)", "verdict (Holm)", "Δ token acc (pp)"]  # fmt: skip
    return [
        "## Against the nearest arms",
        "",
        f"Each arm against the arms the ablation file names for it (`nearest:`, its nearest "
        f"dense sibling first). Intervals: {method_line(list(found.values()))}. Δ = arm − "
        "against; the verdict reads the Holm-adjusted p (< 0.05) of exact accuracy, then of "
        "token accuracy.",
        "",
        table(headers, rows),
        "",
    ]


def _mean(runs: Sequence[RunSummary]) -> float:
    s = stat(runs, "exact_acc")
    return s.mean if s is not None else float("nan")


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def pair_verdict(
    a: str,
    b: str,
    exact: Delta | Interval | None,
    token: Delta | Interval | None,
    p_exact: float | None = None,
    p_token: float | None = None,
) -> str:
    """Which of ``a`` and ``b`` is better: exact accuracy decides when its 95% interval
    excludes 0 (given its adjusted p-value ``p_exact``: when that is below 0.05); otherwise
    token accuracy is read the same way, as the secondary measure."""
    adjusted = p_exact is not None or p_token is not None
    ci = exact.ci95() if exact else None
    if ci is None or (isinstance(exact, Interval) and exact.one_seed):
        return "no interval (one seed)"
    if _decides(exact, ci, p_exact, adjusted):
        return f"`{a if exact.mean > 0 else b}` better (exact)"
    both_zero = exact is not None and exact.mean == 0 and ci == (0.0, 0.0)
    undecided = "p (Holm) >= 0.05" if adjusted else "CI includes 0"
    head = "exact: both 0%" if both_zero else f"exact: {undecided}"
    tci = token.ci95() if token else None
    if tci and _decides(token, tci, p_token, adjusted):
        return f"{head}; `{a if token.mean > 0 else b}` higher token acc"
    return f"{head}; token: {undecided}"


def _decides(d: Any, ci: tuple[float, float], p: float | None, adjusted: bool) -> bool:
    if adjusted:
        return p is not None and p < 0.05 and d.mean != 0
    return ci[0] > 0 or ci[1] < 0


def _pairs(
    done: dict[str, list[RunSummary]], found: dict[tuple[str, str, str], Comparison]
) -> list[str]:
    pairs = list(dict.fromkeys((a, b) for a, b, _ in found))
    if not pairs:  # with two variants, the difference from the baseline is the one pair
        return []
    rows = []
    for a, b in pairs:
        exact, token = found[(a, b, "exact_acc")], found[(a, b, "token_acc")]
        cells = []
        for c in (exact, token):
            ci = _possible(c.interval.ci95()) if c.interval else None
            bounds = f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else "n/a"
            cells += [fmt_delta(c.interval, pct), bounds]
        seeds = exact.interval.seeds if exact.interval else "0"
        rows.append([
            f"`{a}`", f"`{b}`", seeds, *cells, verdict(a, b, exact, token, adjusted=False),
            _p(exact.p_holm), verdict(a, b, exact, token, adjusted=True),
        ])  # fmt: skip
    headers = ["A", "B", "n", "Δ exact acc (pp)", "95% CI", "Δ token acc (pp)", "95% CI",
               "verdict, unadjusted", "p exact (Holm)", "verdict (Holm)"]  # fmt: skip
    return [
        "## Every pair",
        "",
        f"Intervals: {method_line(list(found.values()))}. Δ = A − B, ± standard error. "
        "Exact accuracy decides where its interval excludes 0 (unadjusted) or its Holm-adjusted "
        "p is below 0.05 (adjusted); where it does not, token accuracy is read the same way as "
        "the secondary measure (its own Holm family).",
        "",
        table(headers, rows),
        "",
    ]


def _trajectory(done: dict[str, list[RunSummary]]) -> list[str]:
    keys = [("initial_loss", num), ("loss", num), ("min_loss", num), ("loss_improvement", pct)]
    headers = ["variant", "n", "initial loss", "final loss", "min loss", "improvement (%)"]
    text = "First, last and lowest logged training loss; improvement = (initial − final) / initial."
    by_epoch = any("last_epoch_loss" in r.values for runs in done.values() for r in runs)
    if by_epoch:  # runs that count epochs: the loss per epoch too, less noisy than one step's
        keys += [("last_epoch_loss", num), ("min_epoch_loss", num), ("epoch_loss_improvement", pct)]
        headers += ["last epoch's mean", "lowest epoch mean", "improvement to it (%)"]
        text += (" Per epoch: the mean of the losses logged while that epoch's samples were "
                 "drawn; improvement = (initial − last epoch's mean) / initial.")  # fmt: skip
    rows = [
        [f"`{v}`", str(len(r)), *(fmt_stat(stat(r, k), f) for k, f in keys)]
        for v, r in done.items()
    ]
    return ["## Training loss", "", text, "", table(headers, rows), ""]


def _halting(done: dict[str, list[RunSummary]]) -> list[str]:
    rows = []
    if not any(r.halting.get("max_steps", 1) > 1 for runs in done.values() for r in runs):
        return ["## Halting depth", "", "Every variant runs a fixed number of steps; there is "
                "no halting depth to compare.", ""]  # fmt: skip
    for v, runs in done.items():
        runs = [r for r in runs if r.halting]
        if runs:
            rows.append([
                f"`{v}`", str(len(runs)), fmt_stat(stat(runs, "halting_steps"), num),
                str(max(r.halting["max_steps"] for r in runs)),
                fmt_stat(describe([r.halting["exact_acc_all_steps"] for r in runs]), pct),
                fmt_stat(describe([r.halting["exact_acc"] for r in runs]), pct),
            ])  # fmt: skip
    headers = ["variant", "n", "mean steps (early exit)", "max steps", "exact acc, all steps (%)",
               "exact acc, early exit (%)"]  # fmt: skip
    intro = ("Final checkpoint on the held-out set: each sample stops when its halting policy "
             "says so (early exit), compared with running every step.")  # fmt: skip
    return ["## Halting depth", "", intro, "", table(headers, rows), ""] if rows else []


def _variants(plan: dict[str, Any]) -> list[str]:
    common = ", ".join(f"`{o}`" for o in plan.get("common_overrides", [])) or "none"
    rows = [
        [f"`{v}`", ", ".join(f"`{o}`" for o in ov) or "(none)"]
        for v, ov in plan["variants"].items()
    ]
    return ["## Variants", "", f"Applied to every variant: {common}.", "",
            table(["variant", "overrides"], rows), ""]  # fmt: skip


def _arms(plan: dict[str, Any]) -> list[str]:
    """Every resolved-config key in which a variant differs from the baseline, confounds (keys
    outside the ablation's ``factor``) flagged: arms should differ only in the factor."""
    differences = plan.get("differences")
    if differences is None:
        return []
    factor = ", ".join(f"`{f}`" for f in plan.get("factor") or []) or "none named"
    flagged = {v: set(keys) for v, keys in (plan.get("confounds") or {}).items()}
    rows = []
    for variant, keys in differences.items():
        for key, (base_value, value) in keys.items():
            mark = "**confound**" if key in flagged.get(variant, ()) else "factor"
            rows.append([f"`{variant}`", f"`{key}`", f"`{base_value}`", f"`{value}`", mark])
    out = ["## Fair arms", "", f"Factor: {factor}. Resolved-config keys in which each variant "
           f"differs from the baseline `{plan.get('baseline', '')}`; a difference outside the "
           "factor is a confound (`confounds: error` in the ablation file refuses them).", ""]  # fmt: skip
    n = sum(len(k) for k in flagged.values())
    if n:
        out += [f"**{n} confound(s)**: the comparison of those variants mixes the factor with "
                "other differences.", ""]  # fmt: skip
    out += [table(["variant", "key", "baseline", "variant value", ""], rows) if rows
            else "No variant differs from the baseline.", ""]  # fmt: skip
    return out


def _runs(groups: dict[str, list[RunSummary]]) -> list[str]:
    rows = []
    for v, runs in groups.items():
        for r in runs:
            val = r.values
            rows.append([
                f"`{v}/{r.path.name}`", r.status, str(r.step),
                *(pct(val[k]) if k in val else "–" for k in ("exact_acc", "token_acc")),
                num(val["loss"]) if "loss" in val else "–",
                num(val["halting_steps"]) if "halting_steps" in val else "–",
                f"{val['wall_s']:.1f}" if "wall_s" in val else "–",
            ])  # fmt: skip
    headers = ["run", "status", "steps", "exact acc (%)", "token acc (%)", "final loss",
               "halting steps", "wall time (s)"]  # fmt: skip
    note = "Incomplete runs are listed here and left out of every statistic above."
    return ["## Runs", "", note, "", table(headers, rows), ""]


def _method(done: dict[str, list[RunSummary]]) -> list[str]:
    methods = {v: (runs[0].params.get("method") or DENSE) for v, runs in done.items() if runs}
    lines = [
        "## How the numbers are computed",
        "",
        "- exact / token accuracy: the last evaluation in `metrics.jsonl` (held-out set, every "
        "recursion step, EMA weights where the run uses EMA; the raw and EMA columns are the "
        "same evaluation of the trained and of the averaged weights).",
        "- optimizer steps, samples seen, epochs, training FLOPs: the last logged `step`, "
        "`samples`, `epoch` and `flops` (see Budget spent).",
        "- final loss: the last logged training loss (total loss, auxiliary terms included).",
        "- halting steps: mean recursion steps per held-out sample with early exit "
        "(`halting.json`), else the logged `eval/steps`.",
        "- wall time: training time from `elapsed_s`, summed over resumed segments (start-up, "
        "evaluation after the end and data generation excluded); samples/s: median of the "
        "logged windows.",
    ]
    if methods:  # none when no run of the grid has finished
        lines.append(
            "- active params/token: " + "; ".join(f"`{v}`: {m}" for v, m in methods.items()) + "."
        )
    return lines + [""]


# -- ad hoc comparison --------------------------------------------------------------------------
def compare_table(run_dirs: Sequence[str | Path], warn: Callable[[str], None] | None = None) -> str:
    """A markdown table of any run directories, one row each."""
    rows = []
    for d in run_dirs:
        r = summarize_run(Path(d))
        for problem in r.problems if warn else ():
            warn(problem)
        rows.append([f"`{d}`", r.status, str(r.step)] + [
            f(r.values[k]) if k in r.values else "–" for k, _, f in COLUMNS
        ])  # fmt: skip
    return table(["run", "status", "steps", *(h for _, h, _ in COLUMNS)], rows)
