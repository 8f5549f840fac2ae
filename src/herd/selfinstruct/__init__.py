"""Self-Instruct data generation as Alpaca ran it (recipes.md §1.2), with any teacher.

``prompt`` (seeds, variants, request prompts) → ``teachers`` (in-process base or OpenAI-compatible URL)
→ ``parse`` → ``filters`` → ``novelty`` (exact ROUGE-L > 0.7 rejection, sub-quadratic) → ``generate``
(the resumable loop). ``herd generate self-instruct`` and the ``self_instruct`` data build drive it.
"""
