"""Code derivations (Code Llama): fill-in-the-middle, the code corpus, sandboxed execution evals."""
