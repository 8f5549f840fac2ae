"""herd on one GPU: correctness first, then one table, in under 8 minutes on an H100/H200.

1. Environment and the card's measured bf16 matmul ceiling (8192³ products).
2. Correctness on CUDA: packed rows give the loss of each record alone under every attention kernel that
   runs here (bf16 tolerance); Liger's fused loss equals herd's chunked one; a full, a LoRA and a QLoRA
   ``sft`` stage through herd's own stage code (load, train, merge, publish), each artifact reloaded and
   compared with the trained model's logits.
3. Throughput on SmolLM2-135M's shape (random weights: speed does not depend on their values) on the
   Alpaca demo records packed into 2,048-token rows, full fine-tuning, bf16: herd (attention auto, compile
   on) vs TRL's SFTTrainer without packing and with packing + padding_free, in the same process. Useful
   tokens/s (non-pad tokens through a training step, after warm-up), MFU against the measured ceiling
   (6N + 12·layers·hidden·seq FLOPs per token, as shared/reference/measurements.md counts), peak memory,
   and the memory plan's prediction beside herd's measured peak.
4. Llama-3-8B's shape (random weights): one QLoRA and one LoRA step at a 2,048-token row with gradient
   checkpointing: peak memory (goal for QLoRA: <= 24 GB), seconds per step, the plan's prediction.

Every result is appended to ``--out``/gpu_check.jsonl as it is measured, so a run stopped by its time
limit still returns what it had. ``--smoke`` runs every code path at toy sizes on a CPU (tests do).

    bash bench/gpu_wheels.sh     # here: the wheels, tokenizer and data the GPU machine lacks, into .gpu/
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl   # there
    PYTHONPATH=/tmp/site:src python3 bench/gpu_check.py --tokenizer .gpu/tokenizer \\
        --data .gpu/alpaca_en_demo.json --out $OUT
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from herd.core.recipe import LoraSpec, SFTStage  # noqa: E402
from herd.engine import attention, memory_plan  # noqa: E402
from herd.engine.training import IGNORE_INDEX, LoopConfig, MaskedLMLoss, train  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0)
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False, rope_theta=500000.0)
TOY = dict(SMOLLM2, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)
ROW = 2048
GiB = 1024**3


class Report:
    """Results as JSON lines, flushed one by one, and the lines of the final table."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_check.jsonl"
        self.path.write_text("")
        self.rows: list[dict] = []

    def add(self, section: str, **fields) -> dict:
        row = {"section": section, **fields}
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        print(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in fields.items()), flush=True)
        return row


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def dev() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> float:
    """Start a peak-memory window; returns the bytes allocated now (CUDA) or the RSS (CPU)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return float(torch.cuda.memory_allocated())
    from herd.core.phases import current_rss_mb, reset_peak_rss

    reset_peak_rss()
    return current_rss_mb() * 2**20


def peak_since(base: float) -> float:
    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated()) - base
    from herd.core.phases import process_peak_mb

    return process_peak_mb() * 2**20 - base


# -- 1. environment and ceiling -------------------------------------------------------------------

def environment(rep: Report) -> None:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "liger-kernel", "flash-attn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    rep.add("environment", device=gpu, python=sys.version.split()[0], **versions,
            attention_auto=attention.choose("auto", dev().type)[0])


def bf16_ceiling(rep: Report, smoke: bool) -> float:
    """The card's bf16 matmul FLOP/s: mean of 10 timed 8192³ products after 3 warm-ups."""
    n = 256 if smoke else 8192
    dt = torch.float32 if smoke else torch.bfloat16
    a, b = torch.randn(n, n, device=dev(), dtype=dt), torch.randn(n, n, device=dev(), dtype=dt)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    flops = 10 * 2 * n**3 / (time.perf_counter() - t)
    rep.add("ceiling", matmul=f"{n}^3 {str(dt).removeprefix('torch.')}", tflops=flops / 1e12)
    return flops


# -- 2. correctness -------------------------------------------------------------------------------

def random_llama(config: dict, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # created in its final dtype: an 8B shape never exists in fp32 here
    try:
        with torch.device(dev()):
            return LlamaForCausalLM(LlamaConfig(**config))
    finally:
        torch.set_default_dtype(default)


def packed_equals_alone(rep: Report, config: dict) -> None:
    """Two records in one row (positions restart) vs each alone, bf16 autocast, per kernel."""
    model = random_llama(config).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 1000, (1, 300), generator=g), torch.randint(0, 1000, (1, 200), generator=g)
    lab_a, lab_b = a.roll(-1, 1), b.roll(-1, 1)
    lab_a[0, -1] = lab_b[0, -1] = IGNORE_INDEX
    d = dev()
    loss = MaskedLMLoss(model)
    for impl in ("sdpa", "flex_attention", "flash_attention_2"):
        if (why := attention.available(impl, d.type)) is not None:
            rep.add("correctness", check=f"packed == alone ({impl})", skipped=why)
            continue
        attention.apply(model, impl)
        with torch.no_grad(), torch.autocast(d.type, dtype=torch.bfloat16, enabled=d.type == "cuda"):
            packed = loss(torch.cat([a, b], 1).to(d), torch.cat([torch.arange(300), torch.arange(200)])[None].to(d),
                          torch.cat([lab_a, lab_b], 1).to(d))
            alone = (loss(a.to(d), torch.arange(300)[None].to(d), lab_a.to(d))
                     + loss(b.to(d), torch.arange(200)[None].to(d), lab_b.to(d)))
        rel = abs(float(packed) - float(alone)) / abs(float(alone))
        rep.add("correctness", check=f"packed == alone ({impl})", rel_diff=rel, ok=rel < 2e-2)
    attention.apply(model, "sdpa")


def fused_loss_matches(rep: Report) -> None:
    from herd.engine.cross_entropy import linear_cross_entropy
    from herd.engine.training import fused_loss_kernel

    kernel = fused_loss_kernel()
    if kernel is None:
        rep.add("correctness", check="liger == chunked loss", skipped="no CUDA or liger-kernel not installed")
        return
    torch.manual_seed(0)
    h = torch.randn(3000, 576, device="cuda", requires_grad=True)
    w = (torch.randn(49152, 576, device="cuda") * 0.02).requires_grad_()
    y = torch.randint(0, 49152, (3000,), device="cuda")
    ours = linear_cross_entropy(h, w, y)
    gh, gw = torch.autograd.grad(ours, (h, w))
    liger = kernel(w, h, y)
    lh, lw = torch.autograd.grad(liger, (h, w))
    rel = abs(float(ours) - float(liger)) / float(ours)
    grad = float((gh - lh).abs().max() / gh.abs().max())
    rep.add("correctness", check="liger == chunked loss", rel_diff=rel, grad_rel=grad, ok=rel < 1e-3 and grad < 1e-2)


def stages_end_to_end(rep: Report, tok, records: list, config: dict) -> None:
    """full, LoRA and QLoRA sft stages through herd's own stage code; the artifact reloads to the same
    logits as the model that finished training (bf16 base for LoRA on CUDA: bf16 tolerance)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from herd.base import load_model, resolve_base
    from herd.stages.sft import run_sft
    from herd.templates import get_template

    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "parent"
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(parent)
        tok.save_pretrained(parent)
        parent = resolve_base(parent)
        probe = torch.tensor([tok("Give three tips for staying healthy.")["input_ids"]])
        for method in ("full", "lora", "qlora"):
            t = time.perf_counter()
            cfg = SFTStage(method=method, lr=1e-4, max_steps=3, global_batch=16, micro_batch_rows=2, max_len=512,
                           precision="bf16" if dev().type == "cuda" else "fp32", compile="off",
                           lora=LoraSpec(r=8, alpha=16, dropout=0.0))
            try:
                out, summary = run_sft(cfg, parent, get_template("alpaca"), records[:64], Path(tmp) / method,
                                       name=f"check-{method}", progress=False)
                reloaded = load_model(out).to(dev()).eval()
                first = load_model(parent).to(dev()).eval()
                with torch.no_grad():
                    moved = float((reloaded(probe.to(dev())).logits - first(probe.to(dev())).logits).abs().max())
                rep.add("correctness", check=f"sft {method}: train 3 steps, merge, save, reload",
                        first_loss=summary["first_loss"], final_loss=summary["final_loss"],
                        backend=summary["backend"], logits_moved=moved, ok=moved > 0 and summary["final_loss"] < 20,
                        seconds=time.perf_counter() - t)
                del reloaded, first
            except Exception as e:  # one method's failure must not hide the others'
                rep.add("correctness", check=f"sft {method}", error=f"{type(e).__name__}: {e}"[:600], ok=False,
                        trace=traceback.format_exc()[-1500:])


def evals_on_device(rep: Report, tok, records: list, config: dict) -> None:
    """The evals' two engines on the device: the held-out loss equals the CPU's (fp32 both), and greedy
    batched generation gives the CPU's tokens (ties aside)."""
    from herd.engine.generation import generate
    from herd.engine.heldout import heldout_loss

    items = tokenized(tok, records[:48], 512)
    on_dev, on_cpu = random_llama(config), random_llama(config).cpu()
    on_cpu.load_state_dict(on_dev.state_dict())
    a = heldout_loss(on_dev, items, tok.pad_token_id, row_len=512)["loss"]
    b = heldout_loss(on_cpu, items, tok.pad_token_id, row_len=512)["loss"]
    prompts = [r.messages[0]["content"] for r in records[:6]]
    g_dev = generate(on_dev, tok, prompts, max_new_tokens=24)
    g_cpu = generate(on_cpu, tok, prompts, max_new_tokens=24)
    same = sum(x == y for x, y in zip(g_dev, g_cpu)) / len(prompts)
    rep.add("correctness", check="evals on the device: held-out loss and greedy generation vs CPU",
            loss_device=a, loss_cpu=b, rel_diff=abs(a - b) / b, same_generations=same, ok=abs(a - b) / b < 5e-3)


# -- 3. throughput --------------------------------------------------------------------------------

def tokenized(tok, records: list, max_len: int):
    from herd.data.tokenize import tokenize_examples
    from herd.templates import get_template

    items, _ = tokenize_examples(records, get_template("alpaca"), tok, max_len)
    return items


def flops_per_token(config: dict, seq: int) -> float:
    shape = memory_plan.Shape.from_config(config)
    n = shape.linear_params + shape.vocab * shape.hidden  # what multiplies: the layers and the LM head
    return 6.0 * n + 12.0 * shape.layers * shape.hidden * seq


def herd_throughput(rep: Report, items, config: dict, steps: int, ceiling: float, rows: int, smoke: bool) -> None:
    stage = SFTStage(method="full", max_len=ROW if not smoke else 256, micro_batch_rows=rows, precision="bf16",
                     compile="off" if smoke else "on", global_batch=160)
    base = reset_peak()  # the peak counts the weights too, as the memory plan does
    model = random_llama(config)
    impl, _ = attention.choose("auto", dev().type)
    attention.apply(model, impl)
    cfg = LoopConfig(lr=2e-5, epochs=100, max_steps=steps + 3, global_batch=stage.global_batch,
                     micro_batch_rows=rows, row_len=stage.max_len, precision="bf16" if not smoke else "fp32",
                     progress=False, warmup_ratio=0.0, compile=stage.compile, seed=0)
    from torch._dynamo.utils import counters

    compiles: list[int] = []  # dynamo's compiled frames so far, after each step
    with tempfile.TemporaryDirectory() as d:
        res = train(model, items, cfg, d, pad_id=0, on_log=lambda rec: compiles.append(counters["frames"]["total"]))
    peak = peak_since(base)
    h = res.history[2:]  # the first steps compile
    toks = sum(x["tokens"] for x in h[1:])
    secs = h[-1]["elapsed"] - h[0]["elapsed"]
    tps = toks / secs
    # steps that met a new shape (a recompile) cost seconds once; the steady rate leaves them out
    steady = [i for i in range(3, len(res.history)) if compiles[i] == compiles[i - 1]]
    dts = {i: res.history[i]["elapsed"] - res.history[i - 1]["elapsed"] for i in steady}
    steady_tps = sum(res.history[i]["tokens"] for i in steady) / max(1e-9, sum(dts.values()))
    plan = memory_plan.plan_train(memory_plan.Shape.from_config(config), stage, device=dev().type, bf16=not smoke)
    rep.add("throughput", system=f"herd full FT ({impl}, compile {stage.compile}, {rows} x {stage.max_len} rows)",
            useful_tokens_per_s=tps, mfu_vs_measured=tps * flops_per_token(config, stage.max_len) / ceiling,
            mfu_vs_989=tps * flops_per_token(config, stage.max_len) / 989e12, peak_gib=peak / GiB,
            planned_gib=plan.total / GiB, final_loss=h[-1]["loss"], steps=len(h) - 1,
            steps_with_a_compile=len(h) - 1 - len(steady), row_use=statistics.mean(x["row_use"] for x in h))
    rep.add("throughput", system=f"herd full FT ({impl}, compile {stage.compile}), steady: {len(steady)} steps "
            "without a compile", useful_tokens_per_s=steady_tps,
            mfu_vs_measured=steady_tps * flops_per_token(config, stage.max_len) / ceiling,
            peak_gib=peak / GiB, planned_gib=plan.total / GiB)
    del model


def trl_throughput(rep: Report, tok, items, config: dict, steps: int, ceiling: float, packing: bool, batch: int,
                   smoke: bool) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = []
    for it in items:
        cut = next(i for i, x in enumerate(it.labels) if x != IGNORE_INDEX)
        rows.append({"prompt": tok.decode(it.input_ids[:cut]), "completion": tok.decode(it.input_ids[cut:])})
    counted = {"tokens": [], "t": []}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync()
            counted["t"].append(time.perf_counter())

    max_len = ROW if not smoke else 256
    cfg = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps + 2,
                    learning_rate=2e-5, logging_steps=1000, save_strategy="no", report_to=[], max_length=max_len,
                    completion_only_loss=True, packing=packing, padding_free=packing, bf16=not smoke,
                    use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
                    lr_scheduler_type="constant", warmup_steps=0)
    base = reset_peak()
    model = random_llama(config)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Timer()])
    collate = trainer.data_collator

    def counting(features):
        b = collate(features)
        if "attention_mask" in b:
            counted["tokens"].append(int(b["attention_mask"].sum()))
        else:
            counted["tokens"].append(int((b["input_ids"] != tok.pad_token_id).sum()))
        return b

    trainer.data_collator = counting
    trainer.train()
    peak = peak_since(base)
    toks = sum(counted["tokens"][2: steps + 2])
    secs = counted["t"][-1] - counted["t"][1]
    tps = toks / secs
    label = "packing + padding_free" if packing else "no packing"
    rep.add("throughput", system=f"TRL SFTTrainer full FT, {label}, batch {batch}", useful_tokens_per_s=tps,
            mfu_vs_measured=tps * flops_per_token(config, max_len) / ceiling, peak_gib=peak / GiB, steps=steps)
    del trainer, model


# -- 4. an 8B shape -------------------------------------------------------------------------------

def big_step(rep: Report, config: dict, method: str, smoke: bool) -> None:
    """One training step of Llama-3-8B's shape at one 2,048-token row (gradient checkpointing on):
    the frozen base in bf16 (LoRA) or NF4 (QLoRA, quantised in place from random bf16 weights)."""
    from herd.engine.loading import add_adapter

    d = dev()
    max_len = ROW if not smoke else 128
    stage = SFTStage(method=method, max_len=max_len, micro_batch_rows=1, global_batch=1, precision="bf16",
                     gradient_checkpointing=True, compile="off", lora=LoraSpec(r=16, alpha=32, dropout=0.0))
    before = reset_peak()
    t0 = time.perf_counter()
    model = random_llama(config, dtype=torch.bfloat16)
    if method == "qlora":
        _quantise_in_place(model)
    attention.apply(model, attention.choose("auto", d.type)[0])
    model = add_adapter(model, stage)
    built = time.perf_counter() - t0
    if torch.cuda.is_available():  # the peak of training, weights included, not of building them
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = 0.0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], (max_len,), generator=g).numpy()
    from herd.data.tokenize import Tokenized

    items = [Tokenized(ids, ids.copy(), "random", i) for i in range(3)]
    cfg = LoopConfig(lr=1e-4, max_steps=3, global_batch=1, micro_batch_rows=1, row_len=max_len,
                     precision="bf16" if not smoke else "fp32", progress=False, compile="off",
                     gradient_checkpointing=True, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(model, items, cfg, tmp, pad_id=0)
    peak = peak_since(before)
    step_s = res.history[-1]["elapsed"] - res.history[-2]["elapsed"]
    plan = memory_plan.plan_train(memory_plan.Shape.from_config(config), stage, device=d.type, bf16=True)
    rep.add("8b", system=f"{'Llama-3-8B shape' if not smoke else 'toy shape'} {method}, 1 x {max_len}, "
            "gradient checkpointing", peak_gib=peak / GiB, planned_gib=plan.total / GiB, seconds_per_step=step_s,
            build_seconds=built, losses=[round(h["loss"], 4) for h in res.history],
            ok=(peak / GiB <= 24) if (method == "qlora" and not smoke) else None)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _quantise_in_place(model) -> None:
    """Every decoder linear layer to bitsandbytes' NF4 (double quantisation, bf16 compute), as
    transformers' loader would, without writing 16 GB of random weights to disk first."""
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.bfloat16,
                                      quant_type="nf4", compress_statistics=True, device="meta")
                # Params4bit quantises when moved to the device (also from a tensor already there)
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True).to(lin.weight.device)
                setattr(parent, name, q)
                del lin
    model.is_loaded_in_4bit = True  # herd's loop leaves a quantised model where it is
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # as herd's QLoRA loader does


# -- main -----------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", help="SmolLM2's tokenizer folder (default: herd's own, from the GGUF)")
    ap.add_argument("--data", help="alpaca_en_demo.json (default: ../shared/data)")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-check"))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per throughput row")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on any device: checks the script itself")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: correctness,throughput,trl,trl_packing,8b")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to check the script on a CPU", file=sys.stderr)
        return 2
    from herd.base import load_tokenizer
    from herd.data import load_examples

    rep = Report(Path(args.out))
    t_all = time.perf_counter()
    if args.tokenizer:
        tok = load_tokenizer(Path(args.tokenizer))
    else:
        from herd.base import smollm2_tokenizer_dir

        tok = load_tokenizer(smollm2_tokenizer_dir())
    data = Path(args.data) if args.data else Path(__file__).resolve().parents[2] / "shared" / "data" / \
        "llamafactory_alpaca_en_demo" / "alpaca_en_demo.json"
    records = load_examples(data, "alpaca")
    small = TOY if args.smoke else SMOLLM2
    environment(rep)
    ceiling = bf16_ceiling(rep, args.smoke)
    steps = 2 if args.smoke else args.steps
    four_layers = TOY if args.smoke else dict(SMOLLM2, num_hidden_layers=4)  # SmolLM2's shape, 4 layers
    rows_data = functools.cache(lambda: tokenized(tok, records, ROW if not args.smoke else 256))  # once, shared
    sections = [
        ("correctness", lambda: (packed_equals_alone(rep, small), fused_loss_matches(rep),
                                 evals_on_device(rep, tok, records, four_layers),
                                 stages_end_to_end(rep, tok, records, four_layers))),
        ("throughput", lambda: herd_throughput(rep, rows_data(), small, steps, ceiling,
                                               rows=16 if not args.smoke else 2, smoke=args.smoke)),
        ("trl", lambda: trl_throughput(rep, tok, rows_data(), small, steps, ceiling, packing=False,
                                       batch=24 if not args.smoke else 2, smoke=args.smoke)),
        ("trl_packing", lambda: trl_throughput(rep, tok, rows_data(), small, steps, ceiling, packing=True,
                                               batch=16 if not args.smoke else 2, smoke=args.smoke)),
        ("8b", lambda: [big_step(rep, TOY if args.smoke else LLAMA3_8B, m, args.smoke) for m in ("qlora", "lora")]),
    ]
    for name, run in sections:
        if name in skip:
            continue
        t = time.perf_counter()
        try:
            run()
        except Exception as e:
            rep.add(name, error=f"{type(e).__name__}: {e}"[:800], trace=traceback.format_exc()[-2000:], ok=False)
        rep.add("timing", part=name, seconds=time.perf_counter() - t)
    print_table(rep)
    rep.add("timing", part="all", seconds=time.perf_counter() - t_all)
    failed = [r for r in rep.rows if r.get("ok") is False]
    return 1 if failed else 0


def print_table(rep: Report) -> None:
    rows = [r for r in rep.rows if r["section"] in ("throughput", "8b")]
    trl_nopack = next((r["useful_tokens_per_s"] for r in rows if "no packing" in r.get("system", "")), None)
    print("\n| system | useful tokens/s | MFU (measured ceiling) | vs TRL no packing | peak GiB | planned GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "useful_tokens_per_s" in r:
            ratio = f"{r['useful_tokens_per_s'] / trl_nopack:.2f}x" if trl_nopack else "-"
            print(f"| {r['system']} | {r['useful_tokens_per_s']:,.0f} | {r['mfu_vs_measured']:.1%} | {ratio} | "
                  f"{r['peak_gib']:.2f} | {r.get('planned_gib', float('nan')):.2f} |")
        elif "peak_gib" in r:
            print(f"| {r['system']} | {r['seconds_per_step']:.2f} s/step | - | - | {r['peak_gib']:.2f} | "
                  f"{r['planned_gib']:.2f} |")
    print(flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
