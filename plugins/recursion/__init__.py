"""Built-in recursion plugins."""
