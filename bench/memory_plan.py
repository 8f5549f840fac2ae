"""The memory plan for Llama shapes of 135M, 1B and 8B: full / LoRA / QLoRA at one 2,048-token row, with
and without gradient checkpointing, predicted for a CUDA GPU (bf16) and for this CPU; ``--measure``
also runs the shapes that fit here through herd's loop (random weights) and prints the measured peak
beside the plan (on a GPU bench/gpu_check.py measures the 8B rows).

    .venv/bin/python bench/memory_plan.py [--measure]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from herd.core.recipe import LoraSpec, SFTStage
from herd.engine.memory_plan import GiB, Shape, plan_train

SHAPES = {
    "SmolLM2-135M": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "Llama-3.2-1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "Llama-3-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}


def stage(method: str, checkpointing: bool) -> SFTStage:
    return SFTStage(method=method, micro_batch_rows=1, max_len=2048, gradient_checkpointing=checkpointing,
                    lora=LoraSpec(r=16, alpha=32, dropout=0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="also measure the 135M rows on this machine")
    args = ap.parse_args()
    print("| shape | parameters | method | checkpointing | GPU bf16 (GiB) | CPU fp32 (GiB) | measured here (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, cfg in SHAPES.items():
        shape = Shape.from_config(cfg)
        for method in ("full", "lora", "qlora"):
            for ckpt in (False, True):
                st = stage(method, ckpt)
                gpu = plan_train(shape, st, device="cuda", bf16=True).total / GiB
                cpu = plan_train(shape, st, device="cpu", bf16=False).total / GiB
                measured = "-"
                if args.measure and name == "SmolLM2-135M" and method != "qlora":
                    proc = subprocess.run([sys.executable, "-m", "herd.engine.memory_plan", json.dumps(cfg),
                                           st.model_dump_json(), "fp32"], capture_output=True, text=True)
                    measured = (f"{json.loads(proc.stdout.splitlines()[-1])['measured_gib']:.2f}"
                                if proc.returncode == 0 else "failed")
                print(f"| {name} | {shape.params / 1e9:.2f}B | {method} | {'yes' if ckpt else 'no'} | {gpu:.1f} | "
                      f"{cpu:.1f} | {measured} |", flush=True)


if __name__ == "__main__":
    main()
