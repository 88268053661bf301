"""registry.yaml and the live registry agree: same names, same modules, same summaries."""

from __future__ import annotations

from ponderkit.contract.loading import Plugins


def test_registry_yaml_matches_live_registry():
    plugins = Plugins(autoload=False)
    declared = {(d.kind, d.name): d for d in plugins.registry.declared()}
    plugins.load_all_builtins()
    live = {(c.kind, c.name): c for c in plugins.registry.loaded()}
    assert set(live) == set(declared), "registry.yaml lists different names than are registered"
    for key, comp in live.items():
        assert comp.origin.plugin == declared[key].module, key
        assert comp.summary == declared[key].summary, f"summary of {key} differs"
