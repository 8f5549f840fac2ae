"""Readers: one module per data format, each registering itself (herd.core.registry.READERS)."""
