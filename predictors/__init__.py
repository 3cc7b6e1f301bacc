"""Scoring without training (predictors and proxies), filled in by later issues."""
