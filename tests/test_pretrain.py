"""Continued pretraining (Code Llama, Meditron): FIM layouts exactly as the dossier gives them, the
sentinel tokens, the code corpus filters, streamed rows, LCFT's RoPE change, and the stage end to end
(including kill -9 and resume)."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import yaml

from herd.core.errors import DataError
from herd.data.documents import CorpusReport, check_source, detect_license, stream_source
from herd.data.transforms.fim import (
    SENTINELS,
    FIMStats,
    add_sentinels,
    document_ids,
    fim_ids,
    infill_prompt_ids,
    sentinel_ids,
    split_document,
)
from tests.conftest import SHARED
from tests.test_resume_and_distributed import _final, _run

DOC = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n"


@pytest.fixture()
def fim_tok(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    add_sentinels(tok, None)
    return tok


def _enc(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def test_sentinels_are_single_tokens_and_embeddings_resize_tied(tiny_model, tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    n0 = len(tok)
    ids = add_sentinels(tok, tiny_model)
    assert [ids.pre, ids.suf, ids.mid, ids.eot] == list(range(n0, n0 + 4))
    for s in SENTINELS:
        assert tok.tokenize(f"x{s}y") == ["x", s, "y"]
    emb = tiny_model.get_input_embeddings().weight
    assert emb.shape[0] == n0 + 4
    assert tiny_model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    assert add_sentinels(tok, tiny_model) == ids and len(tok) == n0 + 4  # idempotent


def test_sentinel_embeddings_start_distinct_where_the_parent_read_their_text(tiny_model, tokenizer):
    """transformers' mean resizing makes the four new rows one vector (covariance x 1e-9): the model
    could not tell <MID> from <SUF> nor predict <EOT> apart from <PRE>. Each row starts as the mean of
    the rows of its text's pieces, so the four are distinct."""
    import copy

    import torch

    tok = copy.deepcopy(tokenizer)
    w0 = tiny_model.get_input_embeddings().weight.detach().clone()
    ids = add_sentinels(tok, tiny_model)
    w = tiny_model.get_input_embeddings().weight.detach()
    for s, i in zip(SENTINELS, (ids.pre, ids.suf, ids.mid, ids.eot)):
        assert torch.allclose(w[i], w0[_enc(tokenizer, s)].mean(0))
    d_new = torch.pdist(w[[ids.pre, ids.suf, ids.mid, ids.eot]].float())
    d_old = torch.pdist(w0[:200].float()).median()
    assert d_new.min() > 0.1 * d_old, (d_new.tolist(), float(d_old))


def test_psm_and_spm_training_layouts(fim_tok):
    ids = sentinel_ids(fim_tok)
    pre, mid, suf = "def add(a, b):\n    ret", "urn a + ", "b\n"
    psm = fim_ids(fim_tok, ids, pre, mid, suf, "psm")
    assert psm == ([ids.pre] + _enc(fim_tok, pre) + [ids.suf] + _enc(fim_tok, suf) + [ids.mid]
                   + _enc(fim_tok, mid) + [ids.eot])
    spm = fim_ids(fim_tok, ids, pre, mid, suf, "spm")
    # SPM: <PRE> <SUF> suffix <MID> prefix+middle <EOT>, prefix and middle encoded TOGETHER
    assert spm == [ids.pre, ids.suf] + _enc(fim_tok, suf) + [ids.mid] + _enc(fim_tok, pre + mid) + [ids.eot]
    assert fim_tok.decode(spm[spm.index(ids.mid) + 1:-1]) == pre + mid
    with pytest.raises(ValueError, match="psm"):
        fim_ids(fim_tok, ids, pre, mid, suf, "pms")


def test_spm_separate_encoding_matches_the_inference_prompt_at_a_line_break(fim_tok):
    """SmolLM2's BPE merges a newline with the next line's indentation, so a single-line infilling
    prompt (prefix ending in a newline) ends inside a token that joint SPM encoding never splits;
    ``separate`` makes the training tokens up to the middle exactly the SPM inference prompt."""
    ids = sentinel_ids(fim_tok)
    pre, mid, suf = "def f(x):\n    y = x\n", "    y += 1\n", "    return y\n"
    prompt = infill_prompt_ids(fim_tok, pre, suf, "spm")
    joint = fim_ids(fim_tok, ids, pre, mid, suf, "spm")
    sep = fim_ids(fim_tok, ids, pre, mid, suf, "spm", "separate")
    assert joint[:len(prompt)] != prompt  # the newline+indent token straddles the junction
    assert sep == prompt + _enc(fim_tok, mid) + [ids.eot]
    assert fim_tok.decode(sep) == fim_tok.decode(joint)  # the same text


def test_inference_prompts_follow_codellama_and_parent_gets_sentinel_text(fim_tok, tokenizer):
    ids = sentinel_ids(fim_tok)
    pre, suf = "def f(x):\n", "\n    return y\n"
    assert infill_prompt_ids(fim_tok, pre, suf, "psm") == ([ids.pre] + _enc(fim_tok, pre) + [ids.suf]
                                                             + _enc(fim_tok, suf) + [ids.mid])
    assert infill_prompt_ids(fim_tok, pre, suf, "spm") == ([ids.pre, ids.suf] + _enc(fim_tok, suf) + [ids.mid]
                                                             + _enc(fim_tok, pre))
    parent = infill_prompt_ids(tokenizer, pre, suf, "psm")  # no sentinels: their text, plain tokens
    assert tokenizer.decode(parent) == f"<PRE>{pre}<SUF>{suf}<MID>"
    assert max(parent) < len(tokenizer)


def test_split_is_character_level_uniform_and_lossless():
    rng = random.Random(0)
    cuts = []
    for _ in range(2000):
        p, m, s = split_document(DOC, rng)
        assert p + m + s == DOC
        cuts.append(len(p))
    # uniform over [0, len]: the first cut (min of two uniforms) has mean len/3
    assert abs(sum(cuts) / len(cuts) - len(DOC) / 3) < 1.5
    assert any(0 < c < len(DOC) and DOC[c - 1].isalnum() and DOC[c].isalnum() for c in cuts)  # mid-token


def test_fim_rate_modes_and_documents_that_do_not_fit(fim_tok):
    ids = sentinel_ids(fim_tok)
    stats, rng = FIMStats(), random.Random(1)
    outs = [document_ids(fim_tok, DOC, ids=ids, rate=0.9, spm_rate=0.5, room=1024, rng=rng, stats=stats)
            for _ in range(1000)]
    plain = _enc(fim_tok, DOC)
    n_fim = sum(o != plain for o in outs)
    assert 0.87 < n_fim / 1000 < 0.93 and stats.psm + stats.spm == n_fim
    assert 0.44 < stats.spm / n_fim < 0.56
    spm_out = [o for o in outs if o[:2] == [ids.pre, ids.suf]]
    # (a PSM split with an empty prefix has the same layout as SPM, hence >=)
    assert len(spm_out) >= stats.spm and all(o[-1] == ids.eot for o in outs if o != plain)
    long_stats = FIMStats()
    long = document_ids(fim_tok, DOC * 50, ids=ids, rate=1.0, spm_rate=0.5, room=64, rng=rng, stats=long_stats)
    assert long == _enc(fim_tok, DOC * 50) and long_stats.cut == 1  # cut across rows: no FIM
    assert document_ids(fim_tok, DOC, ids=None, rate=1.0, spm_rate=0.5, room=1024, rng=rng,
                        stats=FIMStats()) == plain


# -- the code corpus ----------------------------------------------------------------------------------

def test_code_corpus_filters_dedup_and_report(tmp_path):
    tree = tmp_path / "repo"
    (tree / "pkg").mkdir(parents=True)
    body = "def f():\n    return 1\n" * 5
    (tree / "pkg" / "a.py").write_text(body)
    (tree / "pkg" / "b.py").write_text(body)  # duplicate content
    (tree / "pkg" / "gpl.py").write_text("# This program is free software under the GNU General Public License\n"
                                         + body)
    (tree / "pkg" / "mit.py").write_text("# SPDX-License-Identifier: MIT\n" + body)
    (tree / "pkg" / "big.py").write_text("x = 1\n" * 5000)
    (tree / "pkg" / "bin.py").write_bytes(b"\x00\x01" * 100)
    (tree / "pkg" / "notes.txt").write_text(body)  # other extension
    rep = CorpusReport("repo")
    docs = list(stream_source("code", tree, {"max_bytes": 10_000}, rep))
    assert len(docs) == 2 and rep.kept == 2 and rep.seen == 6
    assert rep.dropped == {"duplicate content": 1, "licence GPL not allowed": 1, "larger than 10000 bytes": 1,
                           "binary": 1}
    assert detect_license("# Licensed under the Apache License, Version 2.0\n") == "Apache-2.0"
    with pytest.raises(DataError, match="no source files"):
        check_source("code", tree, {"extensions": [".rs"]})
    with pytest.raises(DataError, match="unknown code-corpus option"):
        check_source("code", tree, {"max_size": 1})


def test_stdlib_corpus_is_real_code():
    rep = CorpusReport("stdlib")
    first = next(iter(stream_source("code", Path("stdlib:"), {"shuffle": 0}, rep)))
    assert "def " in first or "class " in first or "import " in first


def test_text_source_errors_name_line_and_field(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"t.jsonl:2 field 'text'"):
        check_source("text", p, {})


# -- rows and the stage -------------------------------------------------------------------------------

def test_rows_are_the_separator_joined_stream_and_stop_at_the_budget(tmp_path, tokenizer):
    from herd.core.recipe import PretrainStage
    from herd.stages.pretrain import build_rows, separator_id

    src = tmp_path / "docs.jsonl"
    texts = [f"Document number {i} says {'word ' * (i % 7)}." for i in range(400)]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = PretrainStage(data=[{"name": "d", "path": str(src)}], max_len=32, total_tokens=32 * 10)
    rows, held, rep = build_rows(cfg, tokenizer, tmp_path / "work")
    sep = separator_id(tokenizer, "auto")
    assert tokenizer.convert_ids_to_tokens(sep) == "<|endoftext|>"
    stream = []
    for t in texts:
        stream += _enc(tokenizer, t) + [sep]
    assert len(rows) == 10 and len(held) == 0 and rep["tokens"] == 320
    assert [x for r in rows for x in r.input_ids] == stream[:320]  # contiguous, nothing lost or reordered
    assert rows[3].labels.tolist() == rows[3].input_ids.tolist()
    assert rep["documents_read"] < 400  # streaming stopped at the budget
    assert (tmp_path / "work" / "rows.u32").stat().st_size == 10 * 32 * 4
    again, _, _ = build_rows(cfg, tokenizer, tmp_path / "work")  # reused, same rows
    assert [r.input_ids.tolist() for r in again] == [r.input_ids.tolist() for r in rows]


def test_no_fim_document_is_cut_across_rows(tmp_path, fim_tok):
    """Code Llama applies FIM only to documents not cut across model contexts: each <PRE> ... <EOT> lies
    in one row. Documents that would straddle a row boundary stay plain (counted as cut)."""
    from herd.core.recipe import PretrainStage
    from herd.stages.pretrain import build_rows, separator_id

    src = tmp_path / "docs.jsonl"
    texts = [f"def f{i}(x):\n" + "    x = x + 1\n" * (3 + i % 11) + "    return x\n" for i in range(300)]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = PretrainStage(data=[{"name": "d", "path": str(src)}], max_len=128, total_tokens=128 * 40,
                        fim={"rate": 1.0})
    rows, _, rep = build_rows(cfg, fim_tok, tmp_path / "work")
    ids, sep = sentinel_ids(fim_tok), separator_id(fim_tok, "auto")
    whole = 0
    for r in rows:
        row = r.input_ids.tolist()
        starts = [i for i, t in enumerate(row) if t == ids.pre]
        ends = [i for i, t in enumerate(row) if t == ids.eot]
        assert len(starts) == len(ends) and all(a < b for a, b in zip(starts, ends)), row
        assert all(b + 1 < len(row) and row[b + 1] == sep for b in ends)  # and its separator, in the row
        whole += len(starts)
    fim = rep["fim"]
    assert whole == fim["psm"] + fim["spm"] > 10 and fim["cut"] > 0


def _code_recipe(tmp_path: Path, corpus: Path, **code) -> Path:
    raw = {
        "name": "codetest", "title": "t", "dossier": "§3", "paper_base": "x", "method": "m", "template": "chatml",
        "stages": [
            {"name": "code", "kind": "pretrain", "data": [{"name": "c", "path": str(corpus), "format": "code"}],
             "fim": {"rate": 0.9}, "max_len": 1024, "global_batch": 2, "micro_batch_rows": 1, "lr": 1e-3,
             "precision": "fp32", "checkpoint_every": 2, "heldout_fraction": 0.3, "heldout_max_rows": 4,
             "total_tokens": 1024 * 12, **code},
            {"name": "lcft", "kind": "pretrain", "data": [{"name": "c", "path": str(corpus), "format": "code"}],
             "rope_theta": 1e6, "max_len": 512, "global_batch": 1, "max_steps": 2, "lr": 1e-4,
             "precision": "fp32", "total_tokens": 1024},
        ],
        "evals": {}, "profiles": {"test": {}},
    }
    p = tmp_path / "codetest.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


@pytest.fixture()
def corpus(tmp_path):
    import sysconfig

    src = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path / "corpus"
    out.mkdir()
    for name in ("bisect.py", "colorsys.py", "keyword.py", "this.py", "stat.py", "fnmatch.py", "glob.py",
                 "struct.py", "opcode.py", "token.py", "copyreg.py", "genericpath.py", "abc.py", "io.py"):
        out.joinpath(name).write_text(src.joinpath(name).read_text())
    return out


def test_code_then_lcft_end_to_end_on_tiny(tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from herd.api import derive

    res = derive(str(_code_recipe(tmp_path, corpus)), base="tiny", profile="test", out=tmp_path / "ws",
                 progress=False)
    model_dir = res.path
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_theta"] == 1e6 and cfg["max_position_embeddings"] >= 512
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert all(len(tok.tokenize(s)) == 1 for s in SENTINELS)
    m = AutoModelForCausalLM.from_pretrained(model_dir)
    assert m.get_input_embeddings().weight.shape[0] == len(tok)
    assert m.model.rotary_emb.inv_freq[1].item() == pytest.approx(1e6 ** (-2 / m.config.head_dim), rel=1e-5)
    code_dir = next((tmp_path / "ws").glob("01-code-*"))
    lin = json.loads((code_dir / "lineage.json").read_text())
    fim = lin["metrics"]["data_report"]["fim"]
    assert fim["psm"] + fim["spm"] > 0 and lin["stage"]["kind"] == "pretrain"
    card = res.scorecard
    assert [s["name"] for s in card["extra"]["stages"]] == ["code", "lcft"]
    lm = [m for m in card["metrics"] if m["name"] == "lm_loss"]
    assert lm and all(r["parent"] > 0 and r["derived"] > 0 for r in lm)
    assert "## Stages" in (model_dir / "scorecard.md").read_text()


@pytest.mark.slow
def test_pretrain_kill_and_resume_is_identical(tmp_path, corpus):
    recipe = _code_recipe(tmp_path, corpus)
    base = ["derive", str(recipe), "--base", "tiny", "--profile", "test"]
    _run(base + ["--out", str(tmp_path / "straight")])
    killed = _run(base + ["--out", str(tmp_path / "killed")], {"HERD_TEST_KILL_AFTER_STEP": "4"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    _run(base + ["--out", str(tmp_path / "killed"), "--resume"])
    (l1, w1), (l2, w2) = _final(tmp_path / "straight"), _final(tmp_path / "killed")
    assert l1 == l2 and all((w1[k] == w2[k]).all() for k in w1)
    first = [json.loads(x)["loss"] for x in next((tmp_path / "killed").glob("01-code-*")).joinpath(
        "metrics.jsonl").read_text().splitlines()]
    assert len(first) == 6


# -- Meditron: mixture with replay and decontamination ------------------------------------------------

def test_meditron_mixture_shares_and_decontamination_reach_the_scorecard(tmp_path):
    from herd.api import derive

    res = derive("meditron", base="tiny", out=tmp_path / "ws", max_steps=1, progress=False,
                 overrides={"stages": {"gap_replay": {"total_tokens": 20480, "max_len": 512}},
                            "evals": {"pubmedqa": {"enabled": False}, "medqa": {"enabled": False}}})
    rep = json.loads(next((tmp_path / "ws").glob("01-gap_replay-*")).joinpath("lineage.json").read_text())
    rep = rep["metrics"]["data_report"]
    assert rep["rows"] == 40  # the budget is filled although held-out documents leave the stream
    shares = {m["name"]: m for m in rep["mixture"]["sources"]}
    for m in shares.values():
        assert abs(m["realised_share"] - m["target_share"]) < 0.01
    assert rep["decontamination"]["max_overlap"] < 0.5 and rep["decontamination"]["test_ids"] == 500
    corpus = rep["corpus"]["pubmedqa_abstracts"]  # the budget cut the stream: what was read adds up
    assert corpus["seen"] == corpus["kept"] + corpus["dropped"]["in the official test split"]
    full = CorpusReport("pubmedqa")
    assert len(list(stream_source("pubmedqa", SHARED / "pubmedqa", {}, full))) == 500
    assert (full.seen, full.kept, dict(full.dropped)) == (1000, 500, {"in the official test split": 500})
    md = (res.path / "scorecard.md").read_text()
    assert "mixture (token shares" in md and "decontamination:" in md
    # Table 5: the PubMedQA fine-tuning follows, on the 400 training questions (dev and test held out)
    sft = json.loads(next((tmp_path / "ws").glob("02-pubmedqa_sft-*")).joinpath("lineage.json").read_text())
    assert sft["metrics"]["data_report"]["kept"] == 400


def test_a_test_context_in_the_training_text_stops_the_run_before_training(tmp_path):
    from herd.api import derive
    from herd.data.documents.pubmedqa import pubmedqa_test_texts

    pmid, text = next(iter(pubmedqa_test_texts(SHARED / "pubmedqa")))
    leak = tmp_path / "leak.jsonl"
    leak.write_text(json.dumps({"text": "Some notes. " + text.upper() + " More notes."}) + "\n")
    with pytest.raises(DataError, match=pmid):
        derive("meditron", base="tiny", out=tmp_path / "ws", max_steps=1, progress=False,
               overrides={"stages": {"gap_replay": {"data": [
                   {"name": "abstracts", "path": "shared:pubmedqa", "format": "pubmedqa", "share": 0.5},
                   {"name": "leaky", "path": str(leak), "format": "text", "share": 0.5}],
                   "total_tokens": 4096, "max_len": 512}},
                   "evals": {"pubmedqa": {"enabled": False}, "medqa": {"enabled": False}}})
    assert not list((tmp_path / "ws").glob("01-*/model.safetensors"))
