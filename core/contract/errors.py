"""Errors that carry a location and a fix, collected before anything is built."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import attrs


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Close matches of ``word`` among ``choices`` (case-insensitive), best first."""
    if len(word) > 100:  # no name is this long; difflib on megabytes would take minutes
        return []
    choices = sorted(set(choices))
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def suggestion(word: str, choices: Iterable[str]) -> str:
    """A ``did you mean ...?`` clause, or '' when nothing is close."""
    hits = did_you_mean(word, choices)
    if not hits:
        return ""
    return "did you mean " + " or ".join(repr(h) for h in hits) + "?"


def dotted(path: Sequence[str | int]) -> str:
    """``('model', 'block', 0)`` -> ``model.block.0``; the root is ``<root>``."""
    return ".".join(str(p) for p in path) if path else "<root>"


@attrs.frozen
class Issue:
    """One problem with a configuration: where it is and what to do about it."""

    path: tuple[str | int, ...]
    message: str
    hint: str = ""
    file: str | None = None
    line: int | None = None

    def located(self, file: str | None, line: int | None) -> Issue:
        return attrs.evolve(self, file=file, line=line)

    def __str__(self) -> str:
        where = (
            f"{self.file}:{self.line}: "
            if self.file and self.line
            else (f"{self.file}: " if self.file else "")
        )
        path = _cut(dotted(self.path), 200)
        text = f"{where}{path}: {self.message}" if self.path else where + self.message
        return _cut(f"{text} ({self.hint})" if self.hint else text, LINE_LIMIT)


# An error line names what is wrong and where; a value it echoes is cut (config.ECHO_LIMIT),
# and so is the whole line, whatever a plugin's message holds.
LINE_LIMIT = 1000
# At most this many problems are listed, then how many more there were.
ISSUE_LIMIT = 20


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class PonderkitError(Exception):
    """Base class of every error ponderkit reports to a user (exit status ``exit_code``)."""

    exit_code = 1


class InputError(PonderkitError):
    """Input the user can fix (a file, a directory, a setting), found before work starts."""

    exit_code = 2


class ConfigError(InputError):
    """One or more configuration problems, all collected before anything was built."""

    def __init__(self, issues: Sequence[Issue]):
        self.issues = list(issues)
        super().__init__("\n".join(self.lines()))

    def lines(self, limit: int = ISSUE_LIMIT) -> list[str]:
        """One line per issue, the first ``limit`` of them, then how many more there are."""
        shown = [str(i) for i in self.issues[:limit]]
        if len(self.issues) > limit:
            shown.append(f"... and {len(self.issues) - limit} more problems like these")
        return shown


class TextError(InputError):
    """Malformed text a person typed (a puzzle for ``ponderkit predict``), at a line and column
    (both 1-based); the command line prefixes the file name."""

    def __init__(self, line: int, column: int, message: str):
        self.line, self.column, self.message = line, column, message
        super().__init__(f"line {line}, column {column}: {message}")


class NonFinite(PonderkitError):
    """Training met a nan or inf loss or gradient (``train.nonfinite: stop``): exit status 3,
    the run's earlier checkpoints kept."""

    exit_code = 3


class PluginError(PonderkitError):
    """A plugin could not be loaded or registered something invalid."""


class UnknownComponentError(PonderkitError, KeyError):
    """A ``kind/name`` that no plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
