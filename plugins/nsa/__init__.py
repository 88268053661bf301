"""Native Sparse Attention (seed 003): compressed, selected and sliding-window branches."""
