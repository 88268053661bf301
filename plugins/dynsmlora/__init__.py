"""DynSMLoRA (seed 003, future directions): a static base attention plus routed low-rank deltas."""
