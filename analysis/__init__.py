"""Analysis of finished runs: reading run folders, paper tables, paired comparisons. Never imports torch."""
