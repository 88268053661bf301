"""Plugin loading: sources, failures, duplicates, misspelled hooks, lazy built-ins."""

from __future__ import annotations

import sys
import textwrap

import attrs
import pytest
from ponderkit import hookimpl
from ponderkit.contract.errors import PluginError, UnknownComponentError
from ponderkit.contract.loading import Plugins
from ponderkit.contract.registry import Origin, Registry


@attrs.frozen
class Cfg:
    """A test component."""

    size: int = 1


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """Write importable plugin modules: module_dir(name, body)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def _write(name: str, body: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        sys.modules.pop(name, None)
        return name

    return _write


GOOD = """
    import attrs
    from ponderkit import hookimpl

    @attrs.frozen
    class EchoConfig:
        '''Echo router for tests.'''
        width: int = 3

    def build(cfg, ctx):
        return cfg.width

    @hookimpl
    def ponderkit_register(registry):
        registry.add("router", "echo", EchoConfig, build)
"""


def test_module_plugin_registers_with_origin(module_dir):
    name = module_dir("pk_good", GOOD)
    plugins = Plugins([name], autoload=False)
    comp = plugins.registry.get("router", "echo")
    assert comp.origin.plugin == "pk_good" and comp.summary == "Echo router for tests."


def test_env_var_plugins(module_dir, monkeypatch):
    name = module_dir("pk_env", GOOD)
    monkeypatch.setenv("PONDERKIT_PLUGINS", f" {name} ,")
    assert Plugins(autoload=False).registry.has("router", "echo")


def test_plugin_that_raises_on_import_is_reported_and_others_load(module_dir):
    bad = module_dir("pk_bad", "raise RuntimeError('boom at import')\n")
    good = module_dir("pk_good2", GOOD)
    warnings: list[str] = []
    plugins = Plugins([bad, good], autoload=False, warn=warnings.append)
    assert plugins.registry.has("router", "echo")
    assert [f.plugin for f in plugins.failures] == ["pk_bad"]
    assert "pk_bad" in warnings[0] and "boom at import" in warnings[0]
    with pytest.raises(PluginError, match="pk_bad.*boom at import"):
        Plugins([bad], autoload=False, strict=True)


def test_duplicate_registration_names_both_plugins(module_dir):
    a = module_dir("pk_dup_a", GOOD)
    b = module_dir("pk_dup_b", GOOD)
    with pytest.raises(PluginError, match="router/echo.*pk_dup_a.*pk_dup_b"):
        Plugins([a, b], autoload=False)


def test_duplicate_of_a_builtin_names_the_builtin(module_dir):
    name = module_dir("pk_shadow", GOOD.replace('"router", "echo"', '"ffn", "swiglu"'))
    with pytest.raises(PluginError, match="ffn/swiglu.*ponderkit.plugins.layers.swiglu.*pk_shadow"):
        Plugins([name], autoload=False)


def test_misspelled_hook_name_is_an_error_with_suggestion(module_dir):
    name = module_dir("pk_typo", GOOD.replace("def ponderkit_register", "def ponderkit_regster"))
    with pytest.raises(
        PluginError, match="pk_typo.*ponderkit_regster.*did you mean 'ponderkit_register'"
    ):
        Plugins([name], autoload=False)


def test_plugin_without_hookimpl_is_an_error(module_dir):
    name = module_dir("pk_empty", "x = 1\n")
    with pytest.raises(PluginError, match="pk_empty has no @hookimpl"):
        Plugins([name], autoload=False)


def test_failed_registration_leaves_nothing_behind():
    reg = Registry()

    class Plugin:
        @hookimpl
        def ponderkit_register(self, registry):
            registry.add("router", "first", Cfg, lambda c, x: None)
            registry.add("rooter", "second", Cfg, lambda c, x: None)

    plugins = Plugins(autoload=False, builtins=False)
    with pytest.raises(PluginError, match="unknown kind 'rooter'; did you mean 'router'"):
        plugins.register(Plugin(), Origin("half"))
    assert not plugins.registry.has("router", "first")
    assert not reg.has("router", "first")


def test_entry_points_load_and_can_be_disabled(tmp_path, monkeypatch, module_dir):
    module_dir("pk_ep", GOOD)
    dist = tmp_path / "pk_ep_dist-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pk-ep-dist\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[ponderkit.plugins]\necho = pk_ep\n")
    comp = Plugins().registry.get("router", "echo")
    assert comp.origin.plugin == "pk-ep-dist:echo" and comp.origin.version == "1.2.3"
    monkeypatch.setenv("PONDERKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert not Plugins().registry.has("router", "echo")


def test_unknown_name_lists_close_matches_and_kind_names(registry):
    with pytest.raises(UnknownComponentError) as info:
        registry.get("block", "postnorm")
    text = str(info.value)
    assert "did you mean 'post_norm'" in text and "pre_norm" in text


def test_builtins_are_imported_lazily(plugins):
    registry = plugins.registry
    assert not plugins.pm.has_plugin("ponderkit.plugins.layers.attention")
    registry.get("mixer", "attention")
    assert plugins.pm.has_plugin("ponderkit.plugins.layers.attention")
    assert not plugins.pm.has_plugin("ponderkit.plugins.tasks.sort")


def test_declared_name_the_module_does_not_register_is_reported():
    plugins = Plugins(autoload=False, builtins=False)
    plugins.registry.declare("router", "ghost", "ponderkit.plugins.halting.fixed", "")
    with pytest.raises(PluginError, match="registers router/ghost"):
        plugins.registry.get("router", "ghost")
