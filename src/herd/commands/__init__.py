"""The command groups of the paper recipes (apibench, generate, mtbench answers and judging)."""
