"""PNG plots of an ablation (matplotlib, Agg backend, imported only when plotting).

Curves show the mean over seeds as a line and the min-max range across seeds as a band; each
variant keeps one colour in every figure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .run_analysis import RunSummary

EXPERT_UTIL = re.compile(r"(?:^|/)expert_(?:util|frac|counts)/(\d+)$")


def write_plots(groups: dict[str, list[RunSummary]], out: Path) -> list[Path]:
    """loss.png, accuracy.png, accuracy_flops.png, accuracy_halting.png, halting.png and, for
    routed variants, experts.png (none when matplotlib is not installed: the report says so)."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    groups = {v: runs for v, runs in groups.items() if runs}
    if not groups:
        return []
    out.mkdir(parents=True, exist_ok=True)
    colours = {v: f"C{i % 10}" for i, v in enumerate(groups)}
    written = [
        _curves(groups, colours, [("loss", "training loss")], out / "loss.png", log=True),
        _curves(
            groups,
            colours,
            [("eval/exact_acc", "eval exact accuracy"), ("eval/token_acc", "eval token accuracy")],
            out / "accuracy.png",
        ),
        _accuracy_flops(groups, colours, out / "accuracy_flops.png"),
        _accuracy_halting(groups, colours, out / "accuracy_halting.png"),
        _halting(groups, colours, out / "halting.png"),
        _experts(groups, colours, out / "experts.png"),
    ]
    return [p for p in written if p is not None]


def series(runs: Sequence[RunSummary], key: str) -> tuple[list[int], list[float], list, list]:
    """Steps, mean, min and max of ``key`` across runs, at every step any run logged it."""
    at: dict[int, list[float]] = {}
    for r in runs:
        for rec in r.records:
            if key in rec and "step" in rec:
                at.setdefault(int(rec["step"]), []).append(float(rec[key]))
    steps = sorted(at)
    return (
        steps,
        [sum(at[s]) / len(at[s]) for s in steps],
        [min(at[s]) for s in steps],
        [max(at[s]) for s in steps],
    )


def _curves(groups, colours, keys, path: Path, log: bool = False) -> Path | None:
    import matplotlib.pyplot as plt

    keys = [
        (k, t)
        for k, t in keys
        if any(k in rec for g in groups.values() for r in g for rec in r.records)
    ]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        for variant, runs in groups.items():
            steps, mean, lo, hi = series(runs, key)
            if not steps:
                continue
            c = colours[variant]
            ax.plot(steps, mean, color=c, lw=1.8, label=f"{variant} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(steps, lo, hi, color=c, alpha=0.2, lw=0)
        positive = all(
            v > 0
            for g in groups.values()
            for r in g
            for rec in r.records
            if key in rec
            for v in [rec[key]]
        )
        if log and positive:
            ax.set_yscale("log")
        ax.set(title=title, xlabel="optimizer step", ylabel=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="mean; band: min–max over seeds", title_fontsize=8)
    return _save(fig, path)


def flops_series(runs: Sequence[RunSummary], key: str = "eval/exact_acc") -> tuple[list, ...]:
    """Training FLOPs spent and ``key`` at each evaluation, the k-th evaluations of all runs
    together (seeds of one variant evaluate at the same steps; under an epoch budget the FLOPs
    of those steps differ a little and are averaged): mean FLOPs, mean, min and max of
    ``key``, up to the evaluation every run reached."""
    per_run = [[rec for rec in r.records if key in rec and "flops" in rec] for r in runs]
    per_run = [p for p in per_run if p]
    n = min((len(p) for p in per_run), default=0)
    columns = [[p[i] for p in per_run] for i in range(n)]
    flops = [sum(float(r["flops"]) for r in c) / len(c) for c in columns]
    values = [[float(r[key]) for r in c] for c in columns]
    return (
        flops,
        [sum(v) / len(v) for v in values],
        [min(v) for v in values],
        [max(v) for v in values],
    )


def _accuracy_flops(groups, colours, path: Path) -> Path | None:
    """Held-out exact accuracy against training FLOPs spent, every variant on one axis."""
    import matplotlib.pyplot as plt

    curves = {v: flops_series(runs) for v, runs in groups.items()}
    curves = {v: c for v, c in curves.items() if c[0]}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for variant, (flops, mean, lo, hi) in curves.items():
        c = colours[variant]
        ax.plot(flops, mean, color=c, lw=1.8, marker="o", ms=3,
                label=f"{variant} (n={len(groups[variant])})")  # fmt: skip
        if len(groups[variant]) > 1:
            ax.fill_between(flops, lo, hi, color=c, alpha=0.2, lw=0)
    if all(f > 0 for c in curves.values() for f in c[0]):
        ax.set_xscale("log")
    ax.set(
        title="held-out exact accuracy against training FLOPs spent",
        xlabel="training FLOPs (forward + backward, measured)",
        ylabel="eval exact accuracy",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="mean; band: min–max over seeds", title_fontsize=8)
    return _save(fig, path)


def _accuracy_halting(groups, colours, path: Path) -> Path | None:
    """Final exact accuracy against mean halting steps, both with early exit where the run was
    analysed (``halting.json``): one dot per run, a cross with ± std bars per variant."""
    import matplotlib.pyplot as plt

    def point(r: RunSummary) -> tuple[float, float] | None:
        # the accuracy the halting steps were measured with: early exit (halting.json), else
        # the last evaluation's (every step)
        v = r.values
        acc = v.get("exact_acc_early_exit", v.get("exact_acc"))
        return None if acc is None or "halting_steps" not in v else (v["halting_steps"], acc)

    points = {v: [p for p in map(point, runs) if p] for v, runs in groups.items()}
    points = {v: p for v, p in points.items() if p}
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for variant, pts in points.items():
        c = colours[variant]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.scatter(xs, ys, color=c, alpha=0.45, s=18)
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sx = _std(xs)
        sy = _std(ys)
        ax.errorbar(mx, my, xerr=sx, yerr=sy, color=c, marker="X", ms=9, capsize=3,
                    label=f"{variant} (n={len(pts)})")  # fmt: skip
    ax.set(
        title="exact accuracy against halting steps (final checkpoint)",
        xlabel="mean recursion steps per held-out sample (early exit where the policy halts)",
        ylabel="eval exact accuracy (early exit)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="dots: runs; cross: mean ± std", title_fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def _halting(groups, colours, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    with_steps = {v: [r for r in runs if r.halting.get("steps")] for v, runs in groups.items()}
    with_steps = {v: runs for v, runs in with_steps.items() if runs}
    if not any(r.halting["max_steps"] > 1 for runs in with_steps.values() for r in runs):
        return None  # fixed depth everywhere: nothing to show
    top = max(r.halting["max_steps"] for runs in with_steps.values() for r in runs)
    fig, axes = plt.subplots(
        1, len(with_steps), figsize=(3.2 * len(with_steps) + 1, 3.4), squeeze=False, sharey=True
    )
    for ax, (variant, runs) in zip(axes[0], with_steps.items(), strict=True):
        steps = [s for r in runs for s in r.halting["steps"]]
        bins = [b + 0.5 for b in range(top + 1)]
        ax.hist(
            steps,
            bins=bins,
            weights=[1 / len(steps)] * len(steps),
            color=colours[variant],
            rwidth=0.85,
        )
        mean = sum(steps) / len(steps)
        ax.set(
            title=f"{variant}\nmean {mean:.2f} steps (n={len(runs)})",
            xlabel="halting step (early exit)",
        )
        ax.set_xlim(0.4, top + 0.6)
        step = 1 if top <= 8 else 4 if top <= 24 else -(-top // 6)
        ax.set_xticks(sorted({1, top, *range(step, top + 1, step)}))
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("share of held-out samples")
    return _save(fig, path)


def _experts(groups, colours, path: Path) -> Path | None:
    """Experts per token and dead experts over training, per-expert shares where logged, and
    each routed layer's expert shares on the held-out set at the end."""
    import matplotlib.pyplot as plt

    routed = {
        v: runs
        for v, runs in groups.items()
        if any(r.params.get("routing") or _logged(r, "experts_per_token") for r in runs)
    }
    if not routed:
        return None
    panels: list[tuple[str, Any]] = []
    for key, title in (
        ("experts_per_token", "experts per token (mean over routed layers)"),
        ("dead_experts", "dead experts"),
        ("router/fallback_rate", "tokens where no expert fired (cosine_threshold fallback)"),
    ):
        if any(_logged(r, key) for runs in routed.values() for r in runs):
            panels.append(("curve", (key, title)))
    for v, runs in routed.items():
        if any(EXPERT_UTIL.search(k) for r in runs for rec in r.records for k in rec):
            panels.append(("over_training", v))
        if runs[0].params.get("routing"):
            panels.append(("final", v))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (kind, what) in zip(axes.flat, panels, strict=False):
        if kind == "curve":
            _expert_curve(ax, routed, colours, *what)
        elif kind == "over_training":
            steps, rows = _expert_shares(routed[what])
            columns = [list(c) for c in zip(*rows, strict=True)]  # (experts, steps)
            extent = (steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(columns) - 0.5)
            im = ax.imshow(columns, aspect="auto", origin="lower", extent=extent)
            ax.set(title=f"{what}: expert share over training", xlabel="step", ylabel="expert")
            fig.colorbar(im, ax=ax)
        else:
            run = routed[what][0]
            routing = run.params["routing"]
            width = max(len(r["utilisation"]) for r in routing.values())
            pad = [float("nan")] * width
            grid = [(r["utilisation"] + pad)[:width] for r in routing.values()]
            im = ax.imshow(grid, aspect="auto", vmin=0)
            labels = [n.replace("recursion.", "") for n in routing]
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
            seed = run.meta.get("seed", "?")
            ax.set(title=f"{what}: share of tokens per expert\n(held-out set, seed {seed})")
            ax.set_xlabel("expert")
            ax.set_xticks(range(width))
            fig.colorbar(im, ax=ax)
    return _save(fig, path)


def _expert_curve(ax: Any, routed: dict, colours: dict, key: str, title: str) -> None:
    for v, runs in routed.items():
        steps, mean, lo, hi = series(runs, key)
        if steps:
            ax.plot(steps, mean, color=colours[v], label=f"{v} (n={len(runs)})")
            ax.fill_between(steps, lo, hi, color=colours[v], alpha=0.2, lw=0)
    ax.set(title=title, xlabel="optimizer step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _logged(run: RunSummary, key: str) -> bool:
    return any(key in rec for rec in run.records)


def _expert_shares(runs: Sequence[RunSummary]) -> tuple[list[int], list[list[float]]]:
    """Per-expert shares by step from ``.../expert_util/<i>`` metrics, averaged over layers
    and seeds."""
    at: dict[int, dict[int, list[float]]] = {}
    for r in runs:
        for rec in r.records:
            for k, value in rec.items():
                m = EXPERT_UTIL.search(k)
                if m and "step" in rec:
                    at.setdefault(int(rec["step"]), {}).setdefault(int(m.group(1)), []).append(
                        value
                    )
    steps = sorted(at)
    experts = 1 + max(e for s in steps for e in at[s])
    rows = [
        [sum(at[s].get(e, [0.0])) / len(at[s].get(e, [0.0])) for e in range(experts)] for s in steps
    ]
    return steps, rows


def waterfall(
    source: str,
    start: float,
    steps: Sequence[tuple[str, Any]],
    target: str,
    path: Path,
    metric: str,
) -> Path | None:
    """A waterfall of ``metric`` from ``source`` (``start``) through each step's difference
    (an object with ``mean`` and ``ci95()``, drawn as a bar from the running total with its
    interval as an error bar) to ``target``; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.2 * (len(steps) + 2) + 2, 4.5))
    ax.bar(0, 100 * start, color="0.6")
    level = start
    for i, (_, delta) in enumerate(steps, start=1):
        colour = "C2" if delta.mean >= 0 else "C3"
        ax.bar(i, 100 * delta.mean, bottom=100 * level, color=colour)
        ci = delta.ci95()
        if ci is not None:  # the interval of this step, around where the bar ends
            top = 100 * (level + delta.mean)
            err = [[100 * (delta.mean - ci[0])], [100 * (ci[1] - delta.mean)]]
            ax.errorbar(i, top, yerr=err, color="k", capsize=4, lw=1)
        ax.text(i, 100 * max(level, level + delta.mean) + 1, f"{100 * delta.mean:+.1f}",
                ha="center", fontsize=8)  # fmt: skip
        level += delta.mean
    ax.bar(len(steps) + 1, 100 * level, color="0.3")
    labels = [source, *(f"+{label}" for label, _ in steps), target]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=f"{metric} (%)", title=f"{source} → {target}: {metric} by factor group")
    ax.set_ylim(-5, 105)  # an interval past 0 or 100% says enough at the edge
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tuning_curves(
    scores: dict[str, dict[str, dict[str, Any]]],
    picks: dict[str, dict[str, Any]],
    metric: str,
    path: Path,
) -> Path | None:
    """Left: each arm's validation ``metric`` at every grid point (its pick circled); right:
    the validation curves over steps of every tuning run (mean over tuning seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    column = 1 if metric == "exact_acc" else 2  # in a curve row: [step, exact, token]
    for i, (arm, cells) in enumerate(scores.items()):
        labels = list(cells)
        xs = range(len(labels))
        left.plot(xs, [100 * cells[k][metric] for k in labels], "o-", color=f"C{i % 10}",
                  label=arm)  # fmt: skip
        chosen = labels.index(picks[arm]["point"])
        left.plot(chosen, 100 * cells[labels[chosen]][metric], "o", ms=12, mfc="none",
                  color=f"C{i % 10}")  # fmt: skip
        for j, label in enumerate(labels):
            curve = cells[label]["seeds"][0]["curve"]
            if curve:
                right.plot([c[0] for c in curve], [100 * (c[column] or 0) for c in curve],
                           color=f"C{i % 10}", alpha=0.4 + 0.6 * j / max(1, len(labels) - 1))  # fmt: skip
        left.set_xticks(list(xs), labels, rotation=20, fontsize=8)
    left.set(ylabel=f"validation {metric} (%)", title="tuning: score by grid point")
    right.set(xlabel="optimizer step", ylabel=f"validation {metric} (%)",
              title="tuning runs (darker: later grid point)")  # fmt: skip
    left.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
