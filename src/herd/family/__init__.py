"""The Llama family at a glance: the catalogue (``herd family``) and the lineage picture (``herd tree``)."""
