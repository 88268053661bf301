"""Regenerate the command outputs quoted in README.md and docs/*.md, so that none is typed.

A quoted output is a fenced block right after a marker naming the command(s) that print it:

    <!-- output: ponderkit list mixer -->
    ```
    $ ponderkit list mixer
    mixer:
      attention  ...
    ```

Several commands may share one block, separated by ` ; ` in the marker. Each is shown as
``$ COMMAND`` followed by what it printed (stdout and stderr, as a terminal shows them).
``<!-- output (test): ... -->`` marks a block as cheap: `tests/docs/test_regen.py` checks
those on every test run, so keep them to commands that take well under a second once torch is
imported (``list``, ``show``, ``config``, ``diff``, a ``validate`` that fails before building).

Commands run in this process through ``ponderkit.app.cli.main`` from the repository root, with
only the built-in plugins (entry points and ``PONDERKIT_PLUGINS`` off), so outputs do not
depend on what else is installed. Only ``ponderkit`` commands can be quoted this way; outputs
of long runs (training, ablations) stay quoted by hand with the command and date that produced
them.

    python docs/regen.py            # rewrite every stale block in place
    python docs/regen.py --check    # exit 1 and show the difference when a block is stale
    python docs/regen.py --check --tested   # only the blocks marked (test)
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"^<!-- output(?P<tested> \(test\))?: (?P<commands>.+?) -->\n"
    r"(?P<fence>```[a-z]*\n)(?P<body>.*?)^```$",
    flags=re.M | re.S,
)
SEPARATOR = " ; "


@dataclass(frozen=True)
class Block:
    """One marked block: where it is, the commands it quotes and what it says now."""

    page: Path
    line: int
    commands: tuple[str, ...]
    tested: bool
    body: str
    span: tuple[int, int]  # character offsets of the body in the page


def pages() -> list[Path]:
    """README.md and every docs/*.md page."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(page: Path) -> Iterator[Block]:
    text = page.read_text()
    for m in MARKER.finditer(text):
        yield Block(
            page=page,
            line=text.count("\n", 0, m.start()) + 1,
            commands=tuple(c.strip() for c in m["commands"].split(SEPARATOR)),
            tested=bool(m["tested"]),
            body=m["body"],
            span=(m.start("body"), m.end("body")),
        )


@contextlib.contextmanager
def _builtins_only() -> Iterator[None]:
    """The repository root as working directory, and no plugin but the built-ins."""
    saved_env = {
        k: os.environ.get(k) for k in ("PONDERKIT_PLUGINS", "PONDERKIT_DISABLE_PLUGIN_AUTOLOAD")
    }
    saved_cwd = Path.cwd()
    os.environ.pop("PONDERKIT_PLUGINS", None)
    os.environ["PONDERKIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(command: str) -> str:
    """What ``command`` (a ``ponderkit ...`` command line) prints, stdout and stderr together."""
    from ponderkit.app.cli import main

    argv = shlex.split(command)
    if not argv or argv[0] != "ponderkit":
        raise ValueError(f"{command!r}: only ponderkit commands are regenerated")
    out = io.StringIO()
    with _builtins_only(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(argv[1:])
        except SystemExit:  # argparse's own errors: their message is the output
            pass
    return out.getvalue()


def render(block: Block) -> str:
    """The body the block should have: each command after ``$ `` and its output."""
    parts = []
    for command in block.commands:
        output = run(command)
        parts.append(
            f"$ {command}\n{output}" + ("" if output.endswith("\n") or not output else "\n")
        )
    return "".join(parts)


def stale(selected: Sequence[Block]) -> list[tuple[Block, str]]:
    """The blocks whose body differs from what their commands print now, with that output."""
    found = []
    for block in selected:
        fresh = render(block)
        if fresh != block.body:
            found.append((block, fresh))
    return found


def rewrite(found: Sequence[tuple[Block, str]]) -> None:
    """Write the fresh bodies into their pages (from the end, so earlier offsets hold)."""
    by_page: dict[Path, list[tuple[Block, str]]] = {}
    for block, fresh in found:
        by_page.setdefault(block.page, []).append((block, fresh))
    for page, items in by_page.items():
        text = page.read_text()
        for block, fresh in sorted(items, key=lambda item: -item[0].span[0]):
            start, end = block.span
            text = text[:start] + fresh + text[end:]
        page.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, exit 1 if any")
    parser.add_argument("--tested", action="store_true", help="only blocks marked (test)")
    args = parser.parse_args(argv)
    selected = [b for page in pages() for b in blocks(page) if b.tested or not args.tested]
    found = stale(selected)
    for block, fresh in found:
        where = f"{block.page.relative_to(REPO)}:{block.line}"
        if args.check:
            diff = difflib.unified_diff(
                block.body.splitlines(), fresh.splitlines(), "quoted", "printed now", lineterm=""
            )
            print(f"{where}: stale output of {SEPARATOR.join(block.commands)}")
            print("\n".join(diff))
        else:
            print(f"{where}: regenerated")
    if not args.check:
        rewrite(found)
    print(f"{len(selected)} blocks, {len(found)} {'stale' if args.check else 'rewritten'}")
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
