"""Every recipe has a ``gpu`` profile: the published protocol at a budget one H100-class GPU (80 GB, bf16)
finishes in minutes to an hour, with its token counts stated. Checked without loading any model.

What a gpu profile may not carry: settings that only trade speed for memory on a small CPU machine.
SmolLM2 full fine-tuning holds ~2.2 GB of fp32 weights, gradients and AdamW moments, so on an 80 GB card
- ``activation_budget`` < 1 (recompute the layers' activations) only costs time (6-16 % fewer tokens/s);
- ``optimizer_state`` bf16 / 8bit changes the optimiser's numbers (rounded moments) to save 0.5 GB;
- ``gradient_checkpointing`` only costs time, and it switches torch.compile off (engine/compiling.py).
Each profile is sized for the default base; a bigger ``--base`` brings its own memory settings.
"""

from __future__ import annotations

import re

import pytest

from herd.core.paths import repo_root
from herd.core.recipe import TrainStage, load_recipe

RECIPES = sorted((repo_root() / "recipes").glob("*.yaml"))
# tokens per forward: the configuration measured on an H100 (shared/reference/measurements.md, 16 x 2,048)
MAX_TOKENS_PER_FORWARD = 32_768
PUBLISHED = ("lr", "epochs", "max_len")  # kept by every gpu profile (global batch only shrinks below the data)


def _trained(stages) -> list:
    """Every optimiser configuration: each stage, and the SFT run inside a rejection-sampling stage."""
    out = []
    for st in stages:
        if hasattr(st, "precision"):
            out.append(st)
        if getattr(st, "sft", None) is not None:
            out.append(st.sft)
    return out


def test_every_recipe_is_checked():
    assert len(RECIPES) >= 9 and any(p.stem == "alpaca-selfinstruct" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_gpu_profile_loads_in_bf16_without_cpu_memory_settings(path):
    rec = load_recipe(str(path), profile="gpu")
    assert rec.profile == "gpu" and rec.base == "smollm2"  # the default base stays; --base picks another
    trained = _trained(rec.stages)
    assert trained, f"{path.name}: no training stage"
    for st in trained:
        where = f"{path.name}: stage {st.name}"
        assert st.precision in ("bf16", "auto"), where
        if isinstance(st, TrainStage):
            assert st.compile in ("auto", "on"), where
            assert st.activation_budget == 1.0, f"{where}: activation recompute is a CPU-memory setting"
            assert st.optimizer_state == "fp32", f"{where}: rounded AdamW moments are a CPU-memory setting"
            assert not st.gradient_checkpointing, f"{where}: checkpointing only saves memory and stops compile"
            assert st.micro_batch_rows * st.max_len <= MAX_TOKENS_PER_FORWARD, where
    # all the records the recipe has: no cut of the training records or pairs
    assert rec.max_train_records is None, path.name
    for st in rec.stages:
        assert getattr(st, "max_train_pairs", None) is None, f"{path.name}: stage {st.name}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_gpu_profile_keeps_the_published_protocol(path):
    full, gpu = load_recipe(str(path), "full"), load_recipe(str(path), "gpu")
    assert [s.name for s in gpu.stages] == [s.name for s in full.stages]
    assert set(gpu.evals) == set(full.evals)
    assert gpu.eval_size == full.eval_size
    for f, g in zip(_trained(full.stages), _trained(gpu.stages)):
        for field in PUBLISHED:
            if hasattr(f, field):
                assert getattr(g, field) == getattr(f, field), f"{path.name}: stage {g.name}.{field}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_gpu_profile_states_its_tokens_and_that_its_time_is_an_estimate(path):
    rec = load_recipe(str(path), "gpu")
    notes = [d for d in rec.deviations if d.startswith("gpu")]
    assert any(re.search(r"\d.*tokens", d) for d in notes), f"{path.name}: no token count in the gpu deviations"
    header = re.search(r"^  gpu:\s*#(.*)$", path.read_text(), re.M)
    assert header, f"{path.name}: the gpu profile's first line carries no comment"
    assert "H100" in header.group(1) and "not yet run on a GPU" in header.group(1), header.group(1)
