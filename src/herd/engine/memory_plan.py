"""Each training stage's peak memory, predicted from the base's config.json before any weights load.

Users' most common question after templates is "will this fit?". herd answers it before the expensive
part: ``herd derive`` prints this plan for every training stage and stops with a clear error when a
stage's predicted peak exceeds what the device has (``--no-memory-check`` runs anyway).

The model is counted the way herd's loop holds it (engine/training.py):
- weights: fp32 master weights for full fine-tuning and for LoRA on a CPU; a bf16 frozen base for LoRA
  on CUDA; 4-bit NF4 linear layers (0.5 byte + 1/64 byte of quantisation constants per parameter, double
  quantisation) with fp32 embeddings and norms for QLoRA;
- bf16 weight copies: under bf16 autocast every fp32 matrix is cast once per forward and the copy is
  kept for the backward (2 bytes per parameter of the decoder's linear layers);
- gradients (fp32, trainable parameters) and AdamW's two moments (8, 4 or 2 bytes per trainable
  parameter for fp32, bf16 or 8-bit state);
- activations of one micro-batch (``micro_batch_rows`` x ``max_len`` tokens): what each decoder layer
  saves for its backward (counted on this loop with saved-tensor hooks, :func:`_saved_per_layer`), twice
  (their gradients in the backward), checked against measured peaks in tests (tests/test_memory_plan.py);
  with recomputation (gradient checkpointing, ``activation_budget: 0``) only each layer's input stays,
  plus one layer's activations during its recompute;
- the loss head: herd's chunked cross-entropy keeps an fp32 gradient of the LM head (vocab x hidden)
  and one chunk's logits; the attention mask of the micro-batch (rows x len² bytes, SDPA).
Not counted: the allocator's fragmentation and the runtime itself (the process's own ~0.5 GB on a CPU,
the CUDA context on a GPU), which :func:`check` adds as a fixed reserve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1024**3
RESERVE = {"cpu": 0.6 * GiB, "cuda": 1.0 * GiB}  # runtime, libraries, CUDA context, allocator slack
# share of ALL layers' activations still resident at the peak under recomputation on a CPU (RSS, measured
# on SmolLM2 shapes at 512-2,048 tokens: full 0.3-0.7, LoRA/QLoRA 0.9-1.0); 0 on CUDA's caching allocator
_CPU_RECOMPUTE_RETAINED = {"full": 0.45, "adapter": 0.95}
_TRANSIENT = 2.0  # one layer's saved activations, times this: the backward's temporaries (calibrated)


def _saved_per_layer(shape: Shape, cfg, tokens: int, bf16: bool, device: str) -> float:
    """Bytes one decoder layer saves for its backward (counted with saved-tensor hooks on this loop):
    the fp32 residual stream and norm inputs (~4.25 hidden), q/k/v/attention output and the GQA-expanded
    keys and values (~6.5 hidden) and the MLP's gate, up, activation and product (4 intermediate) in
    the compute dtype, the per-record attention mask (SDPA on packed rows; none for flash-attention on
    CUDA), and LoRA's dropout outputs and masks."""
    b = 2 if bf16 else 4
    h, i = shape.hidden, shape.intermediate
    per_token = 4.25 * h * 4 + (6.5 * h + 4 * i) * b
    if cfg.method != "full" and cfg.lora.dropout > 0:
        targets = set(cfg.lora.target_modules)
        widths = [i if t == "down_proj" else h for t in shape.linear_shapes() if t in targets]
        per_token += sum(widths) * (b + 1)  # the dropped-out input and its boolean mask, per adapter
    mask = 0 if device == "cuda" else cfg.micro_batch_rows * cfg.max_len ** 2 * b
    return tokens * per_token + mask


@dataclass(frozen=True)
class Shape:
    """A Llama architecture's sizes, from its config.json."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = True

    @classmethod
    def from_config(cls, cfg: dict | str | Path) -> Shape:
        if not isinstance(cfg, dict):
            path = Path(cfg)
            cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        return cls(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                   intermediate=cfg["intermediate_size"], heads=cfg["num_attention_heads"],
                   kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                   vocab=cfg["vocab_size"], tied=bool(cfg.get("tie_word_embeddings", False)))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each decoder layer's linear module, by its transformers name."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(o * i for o, i in self.linear_shapes().values())

    @property
    def other_params(self) -> int:
        """Embeddings, the untied head, the norms."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden * (2 * self.layers + 1)

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int, targets: list[str]) -> int:
        shapes = self.linear_shapes()
        return self.layers * sum(r * (o + i) for name, (o, i) in shapes.items() if name in targets)


@dataclass
class Plan:
    """One stage's predicted peak, by part (bytes)."""

    stage: str
    device: str
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def as_dict(self) -> dict:
        return {"stage": self.stage, "device": self.device, "total_gib": round(self.total / GiB, 3),
                "parts_gib": {k: round(v / GiB, 3) for k, v in self.parts.items()}, "notes": self.notes}

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v >= 0.005 * GiB)
        return f"{self.stage}: {self.total / GiB:.2f} GiB on {self.device} ({parts})"


def plan_train(shape: Shape, cfg, *, device: str = "cpu", bf16: bool = False) -> Plan:
    """Predicted peak of an ``sft`` or ``pretrain`` stage (``cfg``: its TrainStage) on ``device``.
    ``bf16``: whether bf16 autocast computes (training.resolve_precision decides it on the machine)."""
    p = Plan(stage=cfg.name, device=device)
    method = cfg.method
    trainable = shape.params if method == "full" else shape.lora_params(cfg.lora.r, list(cfg.lora.target_modules))
    if method == "full":
        p.parts["weights"] = 4.0 * shape.params
    elif method == "lora":
        frozen = 2.0 if (device == "cuda" and bf16) else 4.0
        p.parts["weights"] = frozen * shape.params + 4.0 * trainable
    else:  # qlora: nf4 linear layers, fp32 embeddings and norms (peft upcasts them), fp32 adapter
        p.parts["weights"] = (0.5 + 1 / 64) * shape.linear_params + 4.0 * shape.other_params + 4.0 * trainable
    if bf16 and method != "qlora" and not (method == "lora" and device == "cuda"):
        p.parts["bf16 weight copies"] = 2.0 * shape.linear_params
    p.parts["gradients"] = 4.0 * trainable
    p.parts["optimizer"] = {"fp32": 8.0, "bf16": 4.0, "8bit": 2.0}[cfg.optimizer_state] * trainable
    tokens = cfg.micro_batch_rows * cfg.max_len
    saved = _saved_per_layer(shape, cfg, tokens, bf16, device)
    recompute = cfg.gradient_checkpointing or cfg.activation_budget == 0
    if recompute:  # each layer's input kept, one layer's activations at a time during its recompute
        layers_saved = tokens * shape.hidden * 4 * shape.layers + saved
        if device == "cpu":  # measured: glibc keeps many of the recomputed layers' freed blocks until the
            kept = _CPU_RECOMPUTE_RETAINED["full" if method == "full" else "adapter"]  # step ends
            layers_saved += kept / 2 * saved * shape.layers  # (/2: the x2 below counts gradients, not these)
        p.notes.append("activations recomputed per layer (gradient checkpointing)")
    else:
        layers_saved = saved * shape.layers * (cfg.activation_budget if 0 < cfg.activation_budget < 1 else 1.0)
    # x2: in the backward each saved activation's gradient is materialised while earlier ones still wait
    # (measured peaks over saved-tensor counts: 1.5-2.7x on SmolLM2 shapes, CPU, fp32 and bf16). CUDA's
    # caching allocator reuses them layer by layer: x1 (H200, SmolLM2 full, 16 x 2,048, bf16, eager flex
    # attention: 31.55 GiB measured, 31.5 predicted; bench/gpu_probe.py). Compiled layers keep ~0.7 of it
    # (the partitioner recomputes elementwise work): 20.3 GiB (flex) and 24.0 (SDPA) measured.
    keep = 2.0
    if device == "cuda" and not recompute:
        keep = 1.0
        if getattr(cfg, "compile", "off") == "on":
            layers_saved *= 0.7
            p.notes.append("compiled layers: ~0.7 of the eager activations (measured once, on an H200)")
    p.parts["activations"] = keep * (layers_saved + tokens * shape.hidden * 4 * 3)  # + embeddings out, final norm
    # the backward's own temporaries: gradients of the widest activations of one layer at a time, the
    # allocator's reuse of freed blocks (calibrated against measured peaks: engine/memory_plan.measure)
    p.parts["backward temporaries"] = _TRANSIENT * saved
    head_grad = 4.0 * shape.vocab * shape.hidden if (method == "full" or _head_trained(cfg)) else 0.0
    p.parts["loss head"] = head_grad + 2 * 256 * shape.vocab * 4 + (2.0 * shape.vocab * shape.hidden if bf16 else 0)
    p.notes.append(f"micro-batch {cfg.micro_batch_rows} x {cfg.max_len} tokens; {trainable:,} trainable of "
                   f"{shape.params:,} parameters")
    return p


def _head_trained(cfg) -> bool:
    return getattr(cfg, "fim", None) is not None and cfg.method != "full"  # FIM's new tokens train the embeddings


def available_bytes(device: str) -> float:
    """What the device can still give this process: free GPU memory, or the OS's MemAvailable."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return float(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


MARGIN = 0.8  # the plan is within ±25 % of measured peaks: refuse only what cannot fit at its low end


def check(plans: list[Plan], device: str, available: float | None = None) -> tuple[str, str] | None:
    """None when every stage fits; else ("error" | "warning", message naming the stage and what would make
    it fit). An error when even 80 % of the prediction exceeds what is available (the plan's tolerance;
    compiled layers also keep fewer activations than it counts), a warning when only the full one does."""
    avail = available_bytes(device) if available is None else available
    for p in plans:
        reserve = RESERVE.get(device, RESERVE["cpu"])
        need = p.total + reserve
        if need <= avail:
            continue
        big = max(p.parts, key=p.parts.get)
        msg = (f"stage {p.stage} is predicted to need {need / GiB:.2f} GiB on {device} (largest part: {big} "
               f"{p.parts[big] / GiB:.2f} GiB) but {avail / GiB:.2f} GiB is available. To fit: "
               "micro_batch_rows: 1, gradient_checkpointing: true (or activation_budget: 0), "
               "method: lora or qlora, optimizer_state: bf16 or 8bit")
        if MARGIN * p.total + reserve > avail:
            return "error", msg + "; or --no-memory-check to run anyway"
        return "warning", msg + " (within the plan's margin: running)"
    return None


def measure(config: dict, stage, *, precision: str = "fp32", steps: int = 2, rows_per_step: int | None = None) -> dict:
    """Run ``stage`` (a TrainStage) for ``steps`` optimizer steps on a random model of ``config`` through
    herd's own loading and loop, and return the measured peak beside the plan: on CUDA the allocator's
    peak, on a CPU the kernel's RSS high-water mark above the RSS before the weights existed (Linux).
    Each call should run in a fresh process: freed CPU memory is not always returned to the OS."""
    import tempfile

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from herd.core.phases import current_rss_mb, process_peak_mb, reset_peak_rss, trim_heap
    from herd.data.tokenize import Tokenized
    from herd.engine.loading import add_adapter, load_for_training, loop_config
    from herd.engine.training import device, resolve_precision, train

    stage = stage.model_copy(update={"precision": precision, "compile": "off", "checkpoint_every": 0})
    per_step = rows_per_step or stage.micro_batch_rows * 2  # two micro-batches: accumulation is in the peak
    stage = stage.model_copy(update={"global_batch": per_step, "max_steps": steps, "epochs": 1.0})
    rng = np.random.default_rng(0)
    items = [Tokenized(ids := rng.integers(0, config["vocab_size"], stage.max_len), ids.copy(), "random", i)
             for i in range(per_step * steps)]
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up on a toy of the same kind: lazy imports (peft, checkpointing, kernels) and the runtime's
        # own buffers are the reserve's, not the plan's
        toy = dict(config, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=256)
        LlamaForCausalLM(LlamaConfig(**toy)).save_pretrained(Path(tmp) / "toy")
        toy_stage = stage.model_copy(update={"max_len": 16, "micro_batch_rows": 1, "global_batch": 1, "max_steps": 2})
        toy_model = add_adapter(load_for_training(Path(tmp) / "toy", toy_stage)[0], toy_stage)
        train(toy_model, [Tokenized(np.arange(16) % 256, np.arange(16) % 256, "toy", i) for i in range(2)],
              loop_config(toy_stage, progress=False), Path(tmp) / "toy-run", pad_id=0)
        del toy_model
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(tmp)
        dev = device()
        trim_heap()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            reset_peak_rss()
            base = current_rss_mb() * 2**20
        model, backend = load_for_training(Path(tmp), stage)
        model = add_adapter(model, stage)
        train(model, items, loop_config(stage, progress=False), Path(tmp) / "run", pad_id=0)
        peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else process_peak_mb() * 2**20) - base
    plan = plan_train(Shape.from_config(config), stage, device=dev.type,
                      bf16=resolve_precision(precision) is not None)
    return {"measured_gib": round(peak / GiB, 3), "planned_gib": round(plan.total / GiB, 3),
            "ratio": round(plan.total / peak, 3), "plan": plan.as_dict(), "backend": backend}


if __name__ == "__main__":  # python -m herd.engine.memory_plan CONFIG_JSON STAGE_JSON PRECISION: one measurement
    import sys

    from herd.core.recipe import SFTStage

    cfg_arg, stage_arg, prec = sys.argv[1:4]
    print(json.dumps(measure(json.loads(cfg_arg), SFTStage.model_validate(json.loads(stage_arg)), precision=prec)))
