"""Where the aggregate is judged: test statistics (inference), every treatment against
its control (analysis, verdicts), and the seed's two-branch comparison (pairwise)."""
