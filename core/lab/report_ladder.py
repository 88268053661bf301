"""The report's ladder sections: each rung's difference from the one below, and a waterfall.

A ``path`` ladder (:mod:`~ponderkit.lab.ladder`) runs from arm A to arm B one factor group at a
time; the differences of its rungs add up to B - A exactly (their means telescope), so the
table attributes the whole difference to the groups, each with its own 95% interval. An
``add_one_in`` ladder gives each group's effect added alone to A, a ``leave_one_out`` ladder
each group's effect taken alone out of B (both against that arm).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .run_analysis import RunSummary
from .stats import difference

#: ``compare(runs, reference_runs, metric)`` -> an object with ``mean`` and ``ci95()`` (a
#: :class:`~ponderkit.lab.stats.Delta` or the report's interval), or None
Compare = Callable[[Sequence[RunSummary], Sequence[RunSummary], str], Any]
METRICS = (("exact_acc", "Δ exact acc"), ("token_acc", "Δ token acc"))


def seed_compare(runs: Sequence[RunSummary], reference: Sequence[RunSummary], key: str) -> Any:
    """``runs`` - ``reference`` on ``key`` over seeds (:func:`~ponderkit.lab.stats.difference`)."""
    return difference(_by_seed(runs, key), _by_seed(reference, key))


def _by_seed(runs: Sequence[RunSummary], key: str) -> dict[int, float]:
    return {
        int(r.meta.get("seed", i)): r.values[key] for i, r in enumerate(runs) if key in r.values
    }


def rung_rows(
    ladder: dict[str, Any], done: dict[str, list[RunSummary]], compare: Compare = seed_compare
) -> list[dict[str, Any]]:
    """Per rung: its name, parent, the groups it moves, why they were merged, its mean exact
    accuracy and, per metric, the difference from its parent (None where runs are missing)."""
    rows = []
    for rung in ladder["rungs"]:
        runs, parent = done.get(rung["name"]) or [], done.get(rung["parent"]) or []
        row = dict(rung)
        values = [r.values["exact_acc"] for r in runs if "exact_acc" in r.values]
        row["exact"] = sum(values) / len(values) if values else None
        for key, _ in METRICS:
            row[key] = compare(runs, parent, key) if runs and parent else None
        rows.append(row)
    return rows


def ladder_section(
    plan: dict[str, Any], done: dict[str, list[RunSummary]], compare: Compare = seed_compare
) -> list[str]:
    """Markdown: one table per ladder of the plan (nothing without ladders)."""
    ladders = plan.get("ladders") or []
    if not ladders:
        return []
    out = [
        "## Ladders",
        "",
        "Each rung changes one factor group of the arm it is compared with (`parent`; merged "
        "groups had to move together, see `why merged`). Δ: rung - parent, in percentage "
        "points, with its 95% interval (the same method as the differences table, cut to "
        "[-100, 100] pp). A path's Δs add up to its target - its source.",
        "",
    ]
    for ladder in ladders:
        rows = rung_rows(ladder, done, compare)
        what = {
            "path": "path",
            "add_one_in": "add one in (each group of the target alone onto the source)",
            "leave_one_out": "leave one out (the target less each group)",
        }[ladder["mode"]]
        out += [f"### `{ladder['from']}` → `{ladder['to']}`: {what}", ""]
        table = [
            "| rung | parent | moves | exact acc | "
            + " | ".join(h for _, h in METRICS)
            + " | why merged |",
            "| --- | --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- |",
        ]
        for row in rows:
            cells = [f"`{row['name']}`", f"`{row['parent']}`", row["step"].replace("_and_", " + ")]
            cells.append("–" if row["exact"] is None else f"{100 * row['exact']:.2f}%")
            cells += [_delta(row[key]) for key, _ in METRICS]
            cells.append(row.get("merged") or "")
            table.append("| " + " | ".join(cells) + " |")
        out += table + [""]
        if ladder["mode"] == "path":
            total = [row["exact_acc"].mean for row in rows if row["exact_acc"] is not None]
            if len(total) == len(rows) and rows:
                out += [f"Sum of the Δ exact acc: {_pp(sum(total))} (`{ladder['to']}` - "
                        f"`{ladder['from']}`).", ""]  # fmt: skip
    return out


def write_waterfalls(
    plan: dict[str, Any],
    done: dict[str, list[RunSummary]],
    out: Path,
    compare: Compare = seed_compare,
) -> list[Path]:
    """``ladder_<from>_to_<to>.png`` per path ladder with every rung run: the source's exact
    accuracy, each rung's step up or down with its interval, the target's total."""
    paths = []
    for ladder in plan.get("ladders") or []:
        if ladder["mode"] != "path":
            continue
        rows = rung_rows(ladder, done, compare)
        start = done.get(ladder["from"]) or []
        base = [r.values["exact_acc"] for r in start if "exact_acc" in r.values]
        if not base or not rows or any(r["exact_acc"] is None for r in rows):
            continue
        from .report_plots import waterfall

        path = out / f"ladder_{ladder['from']}_to_{ladder['to']}.png"
        steps = [(r["step"].replace("_and_", "+"), r["exact_acc"]) for r in rows]
        written = waterfall(
            ladder["from"], sum(base) / len(base), steps, ladder["to"], path, "exact acc"
        )
        if written is not None:
            paths.append(written)
    return paths


def _delta(delta: Any) -> str:
    if delta is None:
        return "–"
    ci = delta.ci95()
    if ci:  # cut to what a difference of accuracies can be, as the differences table does
        ci = (max(ci[0], -1.0), min(ci[1], 1.0))
    interval = f" [{_pp(ci[0])}, {_pp(ci[1])}]" if ci else " (one seed: no interval)"
    return _pp(delta.mean) + interval


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


# -- tuned arms ------------------------------------------------------------------------------
def tune_section(plan: dict[str, Any]) -> list[str]:
    """Markdown: the tuning grid, every arm's validation scores and pick, and what it cost."""
    tuning, tune = plan.get("tuning") or {}, plan.get("tune") or {}
    if not tuning:
        return []
    metric = tune.get("metric", "exact_acc")
    units = {"steps": "steps", "epochs": "epochs", "time_s": "s", "flops": "FLOPs"}
    budget = ", ".join(
        f"{v:g} {units.get(k, k)}" for k, v in (tune.get("budget") or {}).items() if v is not None
    )
    seeds = tune.get("seeds") or (plan.get("seeds") or [0])[:1]
    out = [
        "## Tuned arms",
        "",
        f"Before the comparison every arm trained once per grid point ({', '.join(tuning['grid'])}"
        f") and tuning seed ({', '.join(map(str, seeds))}) at {budget or 'its own budget'}, on "
        f"its training data less a validation split of {tune.get('split')} of it, never on the "
        f"evaluation set; it then ran with the point of highest validation {metric} (ties: "
        f"token accuracy, then the earlier point). Tuning spent {tuning['flops']:.3g} training "
        f"FLOPs in {tuning['runs']} runs (`tune/`).",
        "",
    ]
    header = ["arm", *tuning["grid"], "pick"]
    rows = []
    for arm, cells in tuning["scores"].items():
        pick = tuning["picks"][arm]["point"]
        row = [f"`{arm}`"]
        for label in tuning["grid"]:
            s = cells.get(label)
            text = "–" if s is None else f"{100 * s[metric]:.2f}%"
            row.append(f"**{text}**" if label == pick else text)
        rows.append([*row, pick])
    out += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    out += [f"Validation {metric} of each grid point (the pick in bold).", ""]
    return out


def ladder_and_tune_sections(
    plan: dict[str, Any], done: dict[str, list[RunSummary]], compare: Compare = seed_compare
) -> list[str]:
    """The report's ladder tables and its tuning table (either may be absent)."""
    return ladder_section(plan, done, compare) + tune_section(plan)


def ladder_and_tune_plots(
    plan: dict[str, Any],
    done: dict[str, list[RunSummary]],
    out: Path,
    compare: Compare = seed_compare,
) -> list[Path]:
    """The ladders' waterfalls and ``tuning.png`` (validation score against the learning
    rate, one line per arm, and each run's validation curve over its steps)."""
    paths = write_waterfalls(plan, done, out, compare)
    tuning = plan.get("tuning") or {}
    if tuning:
        from .report_plots import tuning_curves

        metric = (plan.get("tune") or {}).get("metric", "exact_acc")
        written = tuning_curves(tuning["scores"], tuning["picks"], metric, out / "tuning.png")
        paths += [written] if written is not None else []
    return paths
