"""Stages: each receives an artifact path and returns one (they meet only through disk)."""
