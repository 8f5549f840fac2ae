"""Self-Instruct data generation as Alpaca ran it (recipes.md §1.2), with any teacher.

``prompt`` (seeds, variants, request prompts) → ``teachers`` (in-process base or OpenAI-compatible URL)
→ ``parse`` → ``filters`` → ``novelty`` (exact ROUGE-L > 0.7 rejection, sub-quadratic) → ``generate``
(the resumable loop). The original Self-Instruct (``--variant self-instruct``) then goes on in
``instances``: classification identification, instance generation (templates verbatim in
``original_templates``) and the original's instance filters, one Alpaca record per instance.
``herd generate self-instruct`` and the ``self_instruct`` data build drive it.
"""
