"""Evaluations: each returns plain dicts that the scorecard assembles."""
