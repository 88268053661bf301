"""Configuration: every kind of bad input is refused with its path, line and a suggestion."""

from __future__ import annotations

import pytest
from ponderkit.contract.errors import ConfigError
from ponderkit.contract.experiment import load_experiment


def issues_of(path, registry, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides, registry=registry)
    return info.value.issues


def test_valid_experiment_structures_components(sort_yaml, registry):
    exp = load_experiment(sort_yaml, registry=registry).config
    block = exp.model.recursion.config.block
    assert (exp.model.recursion.name, block.name) == ("stacked", "post_norm")
    assert block.config.mixer.config.heads == 4
    assert exp.schedule.name == "supervised"  # default component
    assert exp.model.halting.config.steps == 1  # bare-string reference gets the defaults
    assert exp.optimizer.name == "adamw"  # an optimizer mapping without name
    assert exp.optimizer.config.lr == pytest.approx(3e-3)


def test_misspelled_key_has_path_line_and_suggestion(write, registry):
    path = write(
        "bad.yaml",
        """
        task: sort
        model:
          recursion:
            name: stacked
            block:
              name: post_norm
              mixer: {name: attention, haeds: 4}
        """,
    )
    (issue,) = issues_of(path, registry)
    assert issue.path == ("model", "recursion", "block", "mixer", "haeds")
    assert issue.line == 7 and issue.file == str(path)
    assert "unknown key" in issue.message and "'heads'" in issue.hint


def test_unknown_component_name_lists_matches_and_kind(write, registry):
    path = write(
        "bad.yaml",
        """
        task: sort
        model:
          recursion: {name: stacked, block: {name: post_nrom}}
        """,
    )
    (issue,) = issues_of(path, registry)
    assert issue.path == ("model", "recursion", "block", "name")
    assert "did you mean 'post_norm'" in issue.message
    assert "pre_norm" in issue.message  # the names of that kind are listed


def test_wrong_type_says_expected_and_given(write, registry):
    path = write(
        "bad.yaml",
        """
        task: sort
        model: {recursion: stacked, d_model: sixty-four}
        train: {steps: 2.5, compile: "yes"}
        """,
    )
    got = {i.path: i.message for i in issues_of(path, registry)}
    assert got[("model", "d_model")] == "expected int, got str 'sixty-four'"
    assert got[("train", "steps")] == "expected int, got float 2.5"
    assert "expected bool" in got[("train", "compile")]


def test_missing_required_field(write, registry):
    path = write("bad.yaml", "model: {d_model: 32}\n")
    got = {i.path: i.message for i in issues_of(path, registry)}
    assert "missing required field" in got[("task",)]
    assert "missing required field" in got[("model", "recursion")]


def test_yaml_syntax_error_names_the_line(write, registry):
    path = write("bad.yaml", "task: sort\nmodel:\n  d_model: [1, 2\n  x: 3\n")
    (issue,) = issues_of(path, registry)
    assert issue.message.startswith("YAML error") and issue.line is not None
    assert issue.line >= 3


def test_python_object_tags_are_refused_and_nothing_runs(write, registry, tmp_path):
    marker = tmp_path / "pwned"
    path = write(
        "bad.yaml",
        f"""
        task: !!python/object/apply:os.system ["touch {marker}"]
        """,
    )
    (issue,) = issues_of(path, registry)
    assert "cannot construct Python objects" in issue.message and issue.line == 1
    assert not marker.exists()


def test_extends_merges_and_missing_or_cyclic_extends_fail(write, registry, sort_yaml):
    child = write(
        "child.yaml",
        """
        extends: sort.yaml
        model: {d_model: 64}
        train: {steps: 7}
        """,
    )
    exp = load_experiment(child, registry=registry).config
    assert exp.model.d_model == 64 and exp.train.steps == 7 and exp.task.name == "sort"
    assert exp.model.recursion.config.block.config.mixer.config.heads == 4  # inherited

    missing = write("missing.yaml", "extends: nowhere.yaml\n")
    (issue,) = issues_of(missing, registry)
    assert "not found" in issue.message and "nowhere.yaml" in issue.message

    write("a.yaml", "extends: b.yaml\n")
    b = write("b.yaml", "extends: a.yaml\n")
    (issue,) = issues_of(b, registry)
    assert "cyclic extends" in issue.message


def test_component_name_change_in_child_replaces_parent_fields(write, registry, sort_yaml):
    child = write(
        "child.yaml",
        """
        extends: sort.yaml
        model:
          recursion:
            name: stacked
            block: {name: pre_norm, mixer: mlp_t}
        """,
    )
    block = load_experiment(child, registry=registry).config.model.recursion.config.block
    assert block.name == "pre_norm" and block.config.mixer.name == "mlp_t"


def test_overrides_apply_and_unknown_override_keys_fail(sort_yaml, registry):
    exp = load_experiment(
        sort_yaml,
        ["train.steps=5", "model.halting.steps=1", "optimizer.lr=1e-4"],
        registry=registry,
    ).config
    assert exp.train.steps == 5 and exp.optimizer.config.lr == pytest.approx(1e-4)
    (issue,) = issues_of(sort_yaml, registry, ["train.stpes=5"])
    assert issue.path == ("train", "stpes") and issue.file == "<command line>"
    assert "'steps'" in issue.hint


def test_incompatible_components_are_refused_with_reason(sort_yaml, registry):
    (issue,) = issues_of(sort_yaml, registry, ["model.halting.steps=3"])
    assert issue.path == ("model", "halting", "steps")
    assert "keeps no state between steps" in issue.message


def test_value_check_across_components(sort_yaml, registry):
    (issue,) = issues_of(sort_yaml, registry, ["model.recursion.block.mixer.heads=5"])
    assert issue.path == ("model", "recursion", "block", "mixer", "heads")
    assert "not divisible" in issue.message


def test_attrs_validators_report_the_field(sort_yaml, registry):
    (issue,) = issues_of(sort_yaml, registry, ["optimizer.lr=-1"])
    assert issue.path == ("optimizer", "lr") and "must be > 0" in issue.message


def test_all_errors_are_collected_at_once(write, registry):
    path = write(
        "bad.yaml",
        """
        task: {name: srot}
        model:
          d_model: 32
          recursion: {name: stacked, layrs: 2}
        train: {batch_size: many}
        """,
    )
    issues = issues_of(path, registry)
    assert [i.path for i in issues] == [
        ("task", "name"),
        ("model", "recursion", "layrs"),
        ("train", "batch_size"),
    ]
    assert [i.line for i in issues] == [1, 4, 5]


def test_type_names_read_as_yaml():
    """What `show` and error messages print for a field's type: tuples are YAML lists."""
    from typing import Literal

    from ponderkit.contract.config import type_name

    assert type_name(tuple[int, ...]) == "list of int"
    assert type_name(tuple[Literal["q", "k"], ...]) == "list of ('q' | 'k')"
    assert type_name(tuple[float, float]) == "[float, float]"  # a list of two
    assert type_name(int | None) == "int | null"


def test_list_fields_name_the_bad_item_or_the_length(write, registry):
    path = write(
        "bad.yaml",
        """
        task: sort
        optimizer: {betas: [0.9]}
        schedule: {name: staged, stages: [supervised], steps: [1, x]}
        """,
    )
    got = {i.path: i.message for i in issues_of(path, registry)}
    assert got[("optimizer", "betas")] == "expected a list [float, float], got list [0.9]"
    assert got[("schedule", "steps")] == "item [1]: expected int, got str 'x'"
