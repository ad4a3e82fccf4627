"""Scoring predicted lesion changes against ground truth, and the report."""
