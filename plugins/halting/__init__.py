"""Built-in halting plugins."""
