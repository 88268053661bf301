"""Built-in layers plugins."""
