"""The Tiny Recursive Model (TRM) and HRM: recursions, Q-head halting, deep supervision."""
