"""Datasets: readers → validated :class:`Example` records → transforms → tokenized rows."""

from herd.data.records import Example, load_examples, register_reader

__all__ = ["Example", "load_examples", "register_reader"]
