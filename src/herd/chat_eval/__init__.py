"""Chat evaluation: MT-bench answer generation and pairwise judging (dossier §2.5, FastChat llm_judge)."""
