"""The GPU-facing training paths, checked where a CPU can check them: the attention choice and its
fallbacks, packed attention under every kernel, QLoRA (bitsandbytes runs on CPUs) merged into full-precision
weights, the 8-bit optimizer, the fused-loss choice. bench/gpu_check.py repeats the CUDA side on a GPU."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from herd.core.errors import ConfigError
from herd.core.recipe import SFTStage
from herd.engine import attention
from herd.engine.training import IGNORE_INDEX, LoopConfig, MaskedLMLoss, loss_kernel_name, train

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes not installed (pip install 'herd[qlora]')")


def test_auto_attention_is_sdpa_on_cpu_and_flash_or_flex_on_cuda():
    assert attention.choose("auto", "cpu")[0] == "sdpa"
    impl, why = attention.choose("auto", "cuda")
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "flex_attention"
    assert impl == expected and "CUDA" in why


def test_flash_attention_without_the_package_or_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="flash"):
        attention.choose("flash_attention_2", "cpu")


def test_preflight_rejects_an_unavailable_kernel_before_any_model_loads(tmp_path, tiny_ref, monkeypatch):
    from herd import derive as derive_mod
    from herd.core.recipe import load_recipe

    recipe = load_recipe("alpaca", "tiny", {"stages": {"sft": {"attention": "flash_attention_2"}}})
    monkeypatch.setattr("herd.base.load_model", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(ConfigError, match=r"stages\.sft\.attention: flash_attention_2 cannot run here"):
        derive_mod._preflight(recipe, tiny_ref, tmp_path, progress=False)


def _packed_and_alone(model, impl: str) -> tuple[float, float]:
    """The masked LM loss of two records packed in one row, and of each record alone (summed)."""
    attention.apply(model, impl)
    torch.manual_seed(0)
    a, b = torch.randint(0, 1000, (1, 24)), torch.randint(0, 1000, (1, 16))
    loss = MaskedLMLoss(model)
    lab_a, lab_b = a.roll(-1, 1), b.roll(-1, 1)
    lab_a[0, -1] = lab_b[0, -1] = IGNORE_INDEX
    packed = loss(torch.cat([a, b], 1), torch.cat([torch.arange(24), torch.arange(16)])[None],
                  torch.cat([lab_a, lab_b], 1))
    alone = loss(a, torch.arange(24)[None], lab_a) + loss(b, torch.arange(16)[None], lab_b)
    return float(packed), float(alone)


def test_flex_attention_on_a_cpu_is_a_clear_error():
    """PyTorch's compiled CPU flex kernel is wrong on partial 128-token blocks (attention.available says how
    it was seen); bench/gpu_check.py checks flex attention on CUDA, where it is right."""
    with pytest.raises(ValueError, match="multiple of its 128-token block"):
        attention.choose("flex_attention", "cpu")
    assert attention.available("flex_attention", "cuda") is None


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_rows_never_attend_across_records_with_any_kernel(tiny_model, impl):
    tiny_model.eval()
    with torch.no_grad():
        packed, alone = _packed_and_alone(tiny_model, impl)
    assert packed == pytest.approx(alone, rel=1e-5)


def test_the_fused_loss_is_herds_chunked_one_without_a_gpu():
    assert not torch.cuda.is_available()
    assert loss_kernel_name() == "herd chunked linear cross-entropy"


@needs_bnb
def test_eight_bit_adamw_trains_and_stores_one_byte_moments(tiny_model, tokenizer, alpaca_examples, tmp_path):
    from herd.data.tokenize import tokenize_examples
    from herd.templates import get_template

    items, _ = tokenize_examples(alpaca_examples[:16], get_template("alpaca"), tokenizer, 256)
    cfg = LoopConfig(lr=1e-3, global_batch=4, micro_batch_rows=2, row_len=256, precision="fp32", epochs=2,
                     optimizer_state="8bit", progress=False, compile="off")
    result = train(tiny_model, items, cfg, tmp_path / "run", pad_id=tokenizer.pad_token_id)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    from herd.engine.training import adamw, param_groups

    matrix = torch.nn.Parameter(torch.randn(512, 64))
    opt = adamw(param_groups([matrix], 0.0), state="8bit", lr=1e-3)
    matrix.grad = torch.randn_like(matrix)
    opt.step()
    assert opt.state[matrix]["state1"].dtype == torch.uint8 and opt.state[matrix]["state2"].dtype == torch.uint8


@needs_bnb
@pytest.mark.slow
def test_qlora_trains_a_4bit_base_and_merges_into_full_precision_weights(tmp_path, tiny_ref, tokenizer,
                                                                          alpaca_examples):
    """The artifact is the parent's fp32 weights plus exactly the adapter's B·A·alpha/r: nothing of the
    4-bit copy's rounding lands in it."""
    from herd.stages.sft import run_sft
    from herd.templates import get_template

    cfg = SFTStage(method="qlora", lr=1e-3, epochs=1, global_batch=4, micro_batch_rows=2, max_len=256,
                   precision="fp32", compile="off", lora={"r": 8, "alpha": 16, "dropout": 0.0})
    out, summary = run_sft(cfg, tiny_ref, get_template("alpaca"), alpaca_examples[:16], tmp_path / "qlora",
                           name="qlora-test", progress=False)
    assert summary["backend"]["weights"].startswith("nf4")
    assert summary["final_loss"] < summary["first_loss"]
    parent = load_file(str(tiny_ref.path / "model.safetensors"))
    merged = load_file(str(out / "model.safetensors"))
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert merged["model.norm.weight"].dtype == torch.float32
    assert torch.equal(merged["model.embed_tokens.weight"], parent["model.embed_tokens.weight"])
    for proj in ("self_attn.q_proj", "mlp.down_proj"):
        key = f"model.layers.1.{proj}"
        a = adapter[f"base_model.model.{key}.lora_A.weight"]
        b = adapter[f"base_model.model.{key}.lora_B.weight"]
        delta = merged[f"{key}.weight"] - parent[f"{key}.weight"]
        assert delta.abs().max() > 0  # it trained
        torch.testing.assert_close(delta, (b @ a) * (16 / 8), rtol=1e-4, atol=1e-6)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["metrics"]["backend"]["attention"] == "sdpa"


def test_qlora_with_fsdp_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="qlora does not support fsdp"):
        SFTStage(method="qlora", fsdp=True)
