"""Quoted command outputs are regenerated, not typed: `docs/regen.py` finds the blocks after
``<!-- output: COMMAND -->`` markers, and the cheap ones (marked ``(test)``) are checked here."""

from __future__ import annotations

import difflib
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def load_regen():
    """docs/regen.py as a module (it is a script, not part of the package)."""
    if "docs_regen" not in sys.modules:
        spec = importlib.util.spec_from_file_location("docs_regen", REPO / "docs" / "regen.py")
        sys.modules["docs_regen"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["docs_regen"])
    return sys.modules["docs_regen"]


def test_the_cheap_quoted_outputs_are_what_the_commands_print_now():
    regen = load_regen()
    tested = [b for page in regen.pages() for b in regen.blocks(page) if b.tested]
    assert len(tested) >= 5  # the README's and the pages' (test) blocks are found
    stale = regen.stale(tested)
    shown = "\n".join(
        f"{b.page.relative_to(REPO)}:{b.line}: {' ; '.join(b.commands)}\n"
        + "\n".join(difflib.unified_diff(b.body.splitlines(), fresh.splitlines(), lineterm=""))
        for b, fresh in stale
    )
    assert not stale, f"stale quoted outputs; `python docs/regen.py` rewrites them:\n{shown}"


def test_a_stale_block_is_found_and_rewritten_with_what_the_command_prints(tmp_path):
    regen = load_regen()
    page = tmp_path / "page.md"
    page.write_text(
        "Before.\n\n<!-- output (test): ponderkit list halting -->\n```\n$ ponderkit list halting\n"
        "halting:\n  typed  by hand\n```\n\nAfter.\n"
    )
    [block] = regen.blocks(page)
    assert block.tested and block.commands == ("ponderkit list halting",) and block.line == 3
    [(found, fresh)] = regen.stale([block])
    regen.rewrite([(found, fresh)])
    # the reference: the installed command line in a process of its own
    printed = subprocess.run(
        [str(BIN / "ponderkit"), "list", "halting"],
        capture_output=True,
        text=True,
        check=True,
        env={"PONDERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": str(BIN)},
    ).stdout
    assert "q_head" in printed
    assert page.read_text() == (
        "Before.\n\n<!-- output (test): ponderkit list halting -->\n```\n"
        f"$ ponderkit list halting\n{printed}```\n\nAfter.\n"
    )
    assert regen.stale(list(regen.blocks(page))) == []  # fresh now
