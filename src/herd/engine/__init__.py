"""The engine: the training loops, precision and device, LoRA, generation, log-probs, losses and the
held-out loss. Stages and evals are built from these; nothing here knows a recipe's paper."""
