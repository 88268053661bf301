"""The plugin author's kit: the conformance checks (``check_router`` ...) and the scaffold
that ``ponderkit new-plugin`` writes."""
