"""Built-in ponderkit plugins. ``registry.yaml`` lists which module registers what."""
