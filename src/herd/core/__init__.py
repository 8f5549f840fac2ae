"""The bottom layer: errors, paths, hashing, progress, child processes for native code, the llama.cpp
build plan, the registry class and the recipe schema. Nothing here imports torch at module level."""
