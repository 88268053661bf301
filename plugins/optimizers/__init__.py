"""Optimizers: AdamW, AdamATan2 (the TRM authors'), Muon and Lion, each over the parameter
groups :mod:`.groups` declares."""
