"""Meditron (recipes.md §4): the demo GAP-Replay corpus, its leakage guard, and medical MCQ evals."""
