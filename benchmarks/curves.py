"""Learning curves of an ablation's runs, finished or not, compared at equal steps (CPU).

For each variant: the mean and min-max band over its seeds of held-out accuracy (raw weights
and EMA weights where logged) and of the training loss, against the optimizer step, in one PNG;
and a markdown table of each run's held-out accuracy at every evaluated step, with each
variant's mean at the steps every one of its runs reached. Made for comparisons that stop
before the grid's budget (``ponderkit report`` plots finished runs only).

    python benchmarks/curves.py ABLATION_DIR [--out DIR]     # default: ABLATION_DIR/curves

Writes curves.png and curves.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = [
    ("eval/raw/token_acc", "held-out token accuracy (raw weights)"),
    ("eval/ema/token_acc", "held-out token accuracy (EMA weights)"),
    ("loss", "training loss"),
]


def read_runs(ablation_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """variant -> run key -> metrics records."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for metrics in sorted(ablation_dir.glob("*/seed*/metrics.jsonl")):
        variant, seed = metrics.parent.parent.name, metrics.parent.name
        records = [json.loads(line) for line in metrics.read_text("utf-8").splitlines() if line]
        runs.setdefault(variant, {})[f"{variant}/{seed}"] = records
    return runs


def at_steps(records: list[dict], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in records if key in r and "step" in r}


def table(runs: dict[str, dict[str, list[dict]]], key: str) -> list[str]:
    steps = sorted({s for v in runs.values() for rec in v.values() for s in at_steps(rec, key)})
    lines = [
        f"`{key}` (%) at each evaluated step; `mean` rows only at steps all of a variant's "
        "runs reached.",
        "",
        "| run | " + " | ".join(str(s) for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for variant, by_run in runs.items():
        for name, records in by_run.items():
            got = at_steps(records, key)
            cells = [f"{100 * got[s]:.2f}" if s in got else "" for s in steps]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        got_all = [at_steps(r, key) for r in by_run.values()]
        cells = []
        for s in steps:
            vals = [g[s] for g in got_all if s in g]
            cells.append(f"{100 * sum(vals) / len(vals):.2f}" if len(vals) == len(got_all) else "")
        lines.append(f"| `{variant}` mean (n={len(got_all)}) | " + " | ".join(cells) + " |")
    return lines + [""]


def plot(runs: dict[str, dict[str, list[dict]]], path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        (k, t) for k, t in KEYS if any(at_steps(r, k) for v in runs.values() for r in v.values())
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(6.0 * len(keys), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        for i, by_run in enumerate(runs.values()):
            colour = f"C{i % 10}"
            for j, (name, records) in enumerate(by_run.items()):
                got = at_steps(records, key)
                xs = sorted(got)
                ax.plot(xs, [got[x] for x in xs], color=colour, lw=1.4, alpha=0.9,
                        ls=["-", "--", ":", "-."][j % 4], marker="o", ms=3, label=name)  # fmt: skip
        if key == "loss":
            ax.set_yscale("log")
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ablation_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs = read_runs(args.ablation_dir)
    if not runs:
        parser.error(f"{args.ablation_dir}: no <variant>/seed<k>/metrics.jsonl under it")
    out = args.out or args.ablation_dir / "curves"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Learning curves: {args.ablation_dir.name}", ""]
    for key in ("eval/raw/token_acc", "eval/ema/token_acc", "eval/raw/exact_acc"):
        if any(at_steps(r, key) for v in runs.values() for r in v.values()):
            lines += table(runs, key)
    (out / "curves.md").write_text("\n".join(lines), "utf-8")
    png = plot(runs, out / "curves.png")
    print("\n".join(lines))
    print(f"wrote {out / 'curves.md'}" + (f" and {png.name}" if png else ""))


if __name__ == "__main__":
    main()
