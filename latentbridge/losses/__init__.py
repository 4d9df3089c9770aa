"""Losses: the surrogate loss L_S (paper 3.4, Eq. 1-4) and phase 2's joint loss (3.5, Table 1)."""
