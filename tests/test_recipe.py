"""Recipe files fail before any model loads, naming the file and the field; deviations are computed."""

from __future__ import annotations

import pytest
import yaml

from herd.core.errors import ConfigError
from herd.core.paths import repo_root
from herd.core.recipe import load_recipe


def _variant(tmp_path, mutate) -> str:
    raw = yaml.safe_load((repo_root() / "recipes" / "alpaca.yaml").read_text())
    mutate(raw)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def test_alpaca_full_profile_is_the_published_setting():
    r = load_recipe("alpaca", "full")
    sft = r.stages[0]
    assert (sft.lr, sft.epochs, sft.global_batch, sft.max_len, sft.weight_decay, sft.warmup_ratio) == \
        (2e-5, 3, 128, 512, 0.0, 0.03)
    assert sft.method == "full" and r.template == "alpaca"
    assert not any(d.startswith("setting ") for d in r.deviations)  # only the hand-written notes


def test_tiny_profile_lists_every_changed_setting():
    r = load_recipe("alpaca", "tiny")
    changed = [d for d in r.deviations if d.startswith("setting ")]
    assert "setting stages.sft.epochs: 1.0 (published: 3.0)" in changed
    assert "setting stages.sft.global_batch: 16 (published: 128)" in changed
    assert any(d.startswith("setting max_train_records") for d in changed)


def test_bad_field_names_file_and_path(tmp_path):
    def bad(raw):
        raw["stages"][0]["lr"] = "fast"
        raw["stages"][0]["learning_rate"] = 1

    with pytest.raises(ConfigError) as e:
        load_recipe(_variant(tmp_path, bad), "full")
    msg = str(e.value)
    assert "r.yaml" in msg and "stages.0.sft.lr" in msg and "stages.0.sft.learning_rate" in msg


def test_unknown_profile_eval_and_stage(tmp_path):
    with pytest.raises(ConfigError, match="no profile 'huge'"):
        load_recipe("alpaca", "huge")
    with pytest.raises(ConfigError, match="evals.bleu: unknown evaluation"):
        load_recipe(_variant(tmp_path, lambda r: r["evals"].update(bleu={})), "full")
    with pytest.raises(ConfigError, match=r"profiles.tiny.stages.dpo: no stage of that name"):
        load_recipe(_variant(tmp_path, lambda r: r["profiles"]["tiny"]["stages"].update(dpo={"lr": 1})), "tiny")


def test_dev_split_settings_are_checked(tmp_path):
    r = load_recipe("alpaca", "tiny")
    assert (r.eval_size, r.dev_size, r.eval_split) == (150, 50, "test")
    assert load_recipe("alpaca", "tiny", {"eval_split": "dev"}).eval_split == "dev"
    with pytest.raises(ConfigError, match=r"(?s)r.yaml.*\n  dev_size: 150 leaves no test records"):
        load_recipe(_variant(tmp_path, lambda r: r.update(dev_size=150)), "full")
    with pytest.raises(ConfigError, match="eval_split: dev needs a dev split"):
        load_recipe(_variant(tmp_path, lambda r: r.update(dev_size=0, eval_split="dev")), "full")


def test_unknown_recipe_lists_known():
    with pytest.raises(ConfigError, match="known: .*alpaca"):
        load_recipe("alpacca")


@pytest.mark.parametrize("recipe, cut", [
    ("llamaguard", {"sft.epochs": (0.5, 1.0)}),
    ("meditron", {"gap_replay.total_tokens": (30720, 61440), "pubmedqa_sft.epochs": (1.0, 2.0)}),
])
def test_a_quick_tiny_profile_is_its_small_profile_cut_short(recipe, cut):
    """Where ``small`` is the run that shows a recipe's gain and ``tiny`` its quick demo, tiny runs small's
    data, evals and stage settings on fewer tokens: nothing else may drift between the two."""
    tiny, small = load_recipe(recipe, "tiny"), load_recipe(recipe, "small")
    differ = {}
    for a, b in zip(tiny.stages, small.stages, strict=True):
        da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
        differ |= {f"{a.name}.{k}": (da[k], db[k]) for k in da if da[k] != db[k]}
    assert differ == cut
    rest = {"stages", "profile", "deviations"}
    assert tiny.model_dump(mode="json", exclude=rest) == small.model_dump(mode="json", exclude=rest)
    # each scorecard lists its own profile's deviations, never the other's
    assert any(d.startswith("tiny") for d in tiny.deviations) and not any(d.startswith("small") for d in tiny.deviations)
    assert any(d.startswith("small") for d in small.deviations) and not any(d.startswith("tiny") for d in small.deviations)


def test_a_setting_added_at_its_neutral_value_keeps_finished_stages_finished():
    """A stage's folder is named by a hash of its settings, so a new setting, even at a default that
    computes what herd did before it, would rename every finished stage of that kind on upgrade and
    train it again. A setting declared ``hash_neutral(v)`` is left out of the hash at ``v`` only."""
    from pydantic import Field

    from herd.core.hashing import sha256_json
    from herd.core.recipe import LoraSpec, SFTStage, hash_dump, hash_neutral

    class LoraLater(LoraSpec):
        fused: bool = Field(False, json_schema_extra=hash_neutral(False))

    class SFTLater(SFTStage):
        new_knob: int = Field(0, json_schema_extra=hash_neutral(0))
        moved_default: int = Field(7, json_schema_extra=hash_neutral(3))  # its default changed since
        lora: LoraLater | None = None

    before = SFTStage(name="sft", kind="sft", lr=1e-4, lora=LoraSpec(r=8))
    assert hash_dump(before) == before.model_dump(mode="json")  # nothing marked: today's hashes unchanged
    now = SFTLater(name="sft", kind="sft", lr=1e-4, lora=LoraLater(r=8), moved_default=3)
    assert sha256_json(hash_dump(now)) == sha256_json(hash_dump(before))
    for changed in ({"new_knob": 1}, {"moved_default": 7}, {"lora": LoraLater(r=8, fused=True)}, {"lr": 2e-4}):
        assert sha256_json(hash_dump(now.model_copy(update=changed))) != sha256_json(hash_dump(before)), changed


def test_no_committed_recipe_stage_hashes_differently_than_its_whole_settings():
    """Every stage hashes all of its settings but the hash-neutral ones sitting at their neutral value
    (the folder names of runs made before those settings existed stay valid), and nothing else."""
    import json

    from herd.core.recipe import hash_dump

    def neutral_at_rest(model) -> set[str]:
        return {n for n, f in type(model).model_fields.items() if isinstance(f.json_schema_extra, dict)
                and "hash_neutral" in f.json_schema_extra and getattr(model, n) == f.json_schema_extra["hash_neutral"]}

    seen_neutral = set()
    for path in sorted((repo_root() / "recipes").glob("*.yaml")):
        for profile in yaml.safe_load(path.read_text()).get("profiles") or {}:
            for stage in load_recipe(path.stem, profile).stages:
                left_out = neutral_at_rest(stage)
                seen_neutral |= left_out
                whole = {k: v for k, v in stage.model_dump(mode="json").items() if k not in left_out}
                assert json.dumps(hash_dump(stage)) == json.dumps(whole), (path.stem, profile)
    assert "temperatures" in seen_neutral  # rejection stages without candidates keep their folders
