"""Analysis: curves and BD deltas, complexity (Table 3), the paper's findings, result tables."""
