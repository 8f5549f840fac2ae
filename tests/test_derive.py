"""`herd derive` end to end on the tiny base: artifact, lineage, scorecard, chat, and loading in plain
transformers with herd blocked from import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from herd.core.paths import repo_root


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    from herd.api import derive

    tmp = tmp_path_factory.mktemp("derive")
    raw = yaml.safe_load((repo_root() / "recipes" / "alpaca.yaml").read_text())
    raw["profiles"]["test"] = {"max_train_records": 24, "eval_size": 10, "dev_size": 4,
                               "stages": {"sft": {"epochs": 1, "global_batch": 8, "lr": 1e-3, "max_len": 256,
                                                  "precision": "fp32"}},
                               "evals": {"side_by_side": {"n": 2, "max_new_tokens": 8}, "mtbench_pairwise": {"enabled": False}}}
    recipe = tmp / "alpaca.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    res = derive(str(recipe), base="tiny", profile="test", out=tmp / "ws", progress=False)
    return res, tmp / "ws"


def test_artifact_has_lineage_scorecard_and_card(derived):
    res, ws = derived
    model = (ws / "model").resolve()
    assert res.path.resolve() == model
    lin = json.loads((model / "lineage.json").read_text())
    assert lin["parent"]["name"] == "tiny" and lin["template"]["name"] == "alpaca"
    assert lin["recipe"]["name"] == "alpaca" and lin["stage"]["kind"] == "sft"
    assert lin["stage"]["arithmetic"] == "fp32"  # what `precision` computed where it trained
    assert len(lin["data"]) == 2 and all(len(d["sha256"]) == 64 for d in lin["data"])
    assert lin["weights_sha256"] and lin["id"]
    card = json.loads((model / "scorecard.json").read_text())
    assert {m["task"] for m in card["metrics"]} == {"held-out response loss", "held-out response perplexity"}
    # lr 1e-3 on a random model must lower the held-out loss: the stage really trained
    loss = next(m for m in card["metrics"] if m["name"] == "loss")
    assert loss["derived"] < loss["parent"]
    assert card["extra"]["splits"] == {"held_out": 10, "dev": 4, "test": 6, "scored": "test"}
    kept = card["extra"]["heldout_data"]["kept"]  # test records within max_len
    assert 4 <= kept <= 6 and loss["n"] == kept and f"held-out test split ({kept} records" in loss["dataset"]
    assert len(card["samples"]) == 2 and any("setting" in d for d in card["deviations"])
    assert card["run"]["stages"] == [{"name": "sft", "folder": model.name, "arithmetic": "fp32", "reused": False}]
    assert f"`{model.name}` (fp32, trained by this run)" in (model / "scorecard.md").read_text()
    readme = (model / "README.md").read_text()
    assert readme.startswith("---\n") and "base_model: tiny" in readme and "model-index" in readme
    assert (model / "loss.png").stat().st_size > 1000
    assert len((model / "metrics.jsonl").read_text().splitlines()) == lin["metrics"]["steps"]


def test_rerun_skips_finished_stage(derived, capsys, monkeypatch):
    from herd.api import derive

    res, ws = derived
    recipe = ws.parent / "alpaca.yaml"
    before = (res.path / "model.safetensors").stat().st_mtime_ns
    rerun = derive(str(recipe), base="tiny", profile="test", out=ws, progress=True)
    out = capsys.readouterr().out
    assert "done already" in out and "this machine computes" not in out
    assert (res.path / "model.safetensors").stat().st_mtime_ns == before
    assert rerun.scorecard["run"]["stages"][0]["reused"] is True
    # the stage's hash names its settings, not the arithmetic: a machine that would compute otherwise says so
    monkeypatch.setattr("herd.engine.training.arithmetic", lambda precision: "bf16")
    derive(str(recipe), base="tiny", profile="test", out=ws, progress=True)
    out = capsys.readouterr().out
    assert "done already" in out and "trained in fp32 (precision: fp32)" in out and "computes bf16" in out
    assert (res.path / "model.safetensors").stat().st_mtime_ns == before


def test_scoring_the_dev_split_does_not_retrain(derived, capsys):
    from herd.api import derive

    res, ws = derived
    before = (res.path / "model.safetensors").stat().st_mtime_ns
    dev = derive(str(ws.parent / "alpaca.yaml"), base="tiny", profile="test", out=ws, progress=True,
                 overrides={"eval_split": "dev"})
    assert "done already" in capsys.readouterr().out
    assert (res.path / "model.safetensors").stat().st_mtime_ns == before
    card = json.loads((dev.path / "scorecard.json").read_text())
    loss = next(m for m in card["metrics"] if m["name"] == "loss")
    assert loss["n"] == card["extra"]["heldout_data"]["kept"] <= 4 and card["extra"]["splits"]["scored"] == "dev"
    assert "held-out dev split" in loss["dataset"]
    assert card["run"]["command"].split("--eval-split ")[1].startswith("dev")
    # the test scorecard comes back with the default split, so the fixture's artifact is left as it was
    derive(str(ws.parent / "alpaca.yaml"), base="tiny", profile="test", out=ws, progress=False)


def test_loads_in_plain_transformers_without_herd(derived):
    _, ws = derived
    code = (
        "import sys; sys.modules['herd'] = None\n"  # any `import herd` now fails
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"p = {str((ws / 'model').resolve())!r}\n"
        "tok = AutoTokenizer.from_pretrained(p); m = AutoModelForCausalLM.from_pretrained(p)\n"
        "msgs = [{'role': 'user', 'content': 'Say hi.'}]\n"
        "print(repr(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)))\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), check=True).stdout
    assert "LlamaForCausalLM" in out
    assert "### Instruction:\\nSay hi.\\n\\n### Response:'" in out  # the artifact's own template


def test_chat_and_info_cli(derived):
    _, ws = derived
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "herd.cli", "chat", str(ws), "-m", "Hello", "-m", "Again",
                          "--max-new-tokens", "5"], capture_output=True, text=True, env=env, check=True).stdout
    assert out.count("> ") == 2
    info = subprocess.run([sys.executable, "-m", "herd.cli", "info", str(ws)], capture_output=True, text=True,
                          env=env, check=True).stdout
    assert "recipe     alpaca / profile test" in info and "held-out response loss" in info


def test_bad_data_fails_before_model_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n')
    proc = subprocess.run([sys.executable, "-m", "herd.cli", "derive", "alpaca", "--base", "/nonexistent",
                           "--data", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2
    assert "bad.jsonl:2 record 1 field 'output': expected a string, got int" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_base_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "herd.cli", "derive", "alpaca", "--base", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2 and "base" in proc.stderr and "not found" in proc.stderr
