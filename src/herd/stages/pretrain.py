"""The ``pretrain`` stage: continued pretraining on raw documents (Code Llama, Meditron).

Documents stream from their sources (``herd.data.documents``), optionally through the token-share
mixture (``herd.data.transforms.mixture``) and the FIM transform (``herd.data.transforms.fim``), are joined by a separator
token and cut into rows of ``max_len`` tokens written to a memory-mapped file: memory stays flat
however large the corpus, and a resumed run reuses the rows. Training is the SFT engine with every
token a target (``global_batch`` counts rows). A hash-selected share of documents is held out and
scored, parent vs trained, as plain autoregressive text.

Model changes happen before training and are written into the artifact: FIM's four sentinel tokens
(embeddings resized, tied weights kept tied) and, for long-context fine-tuning, the RoPE base period.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from herd.base import BaseRef, load_tokenizer
from herd.core.errors import ConfigError, HerdError
from herd.core.hashing import sha256_json
from herd.core.paths import resolve_data_path
from herd.core.progress import Progress
from herd.core.recipe import DocSource, PretrainStage
from herd.core.registry import STAGE_CHECKS, STAGES
from herd.data.documents import CorpusReport, check_source, resolve_code_root, stream_source
from herd.data.tokenize import Tokenized
from herd.engine.training import dist_env, loss_kernel_name, train
from herd.stages import StageContext
from herd.stages.common import add_adapter, load_for_training, loop_config, publish_stage
from herd.templates import Template


def source_path(src: DocSource, recipe_dir: Path | None = None) -> Path:
    if src.format == "code":
        return Path(resolve_code_root(src.path))
    return resolve_data_path(src.path, recipe_dir)


def check_sources(cfg: PretrainStage, recipe_dir: Path | None = None) -> None:
    """Validate every source before a model loads (called when the recipe's data is checked)."""
    for src in cfg.data:
        check_source(src.format, source_path(src, recipe_dir), src.options)
    if cfg.fim is not None and len(cfg.data) > 1:
        raise ConfigError(f"stage {cfg.name}: FIM applies to one code source; mix code with other sources in "
                          "a separate stage")


def separator_id(tok, spec: str) -> int:
    """The token between documents: SmolLM2-Instruct's EOS is the chat's <|im_end|>, while its
    pretraining documents were separated by <|endoftext|>; "auto" prefers the latter when present."""
    if spec == "auto":
        vocab = tok.get_vocab()
        return vocab["<|endoftext|>"] if "<|endoftext|>" in vocab else tok.eos_token_id
    if spec == "eos":
        return tok.eos_token_id
    ids = tok(spec, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"separator {spec!r} is not a single token of this tokenizer")
    return ids[0]


def _heldout(key: bytes, fraction: float) -> bool:
    return fraction > 0 and int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64 < fraction


class RowSet(Sequence):
    """Rows of a uint32 memory-mapped file as :class:`Tokenized` items (every token a target)."""

    def __init__(self, path: Path, row_len: int):
        self.path, self.row_len = path, row_len
        n = path.stat().st_size // (4 * row_len) if path.exists() else 0
        self._mm = np.memmap(path, dtype=np.uint32, mode="r", shape=(n, row_len)) if n else None
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        ids = self._mm[i].astype(np.int64).tolist()
        return Tokenized(input_ids=ids, labels=list(ids), source=str(self.path), index=int(i))


class _RowWriter:
    def __init__(self, path: Path, row_len: int, max_rows: int | None):
        self.f = path.open("wb")
        self.row_len, self.max_rows = row_len, max_rows
        self.buf: list[int] = []
        self.rows = 0

    @property
    def full(self) -> bool:
        return self.max_rows is not None and self.rows >= self.max_rows

    def add(self, ids: list[int]) -> None:
        self.buf.extend(ids)
        while len(self.buf) >= self.row_len and not self.full:
            np.asarray(self.buf[: self.row_len], dtype=np.uint32).tofile(self.f)
            del self.buf[: self.row_len]
            self.rows += 1

    def close(self) -> None:
        self.f.close()


def _documents(cfg: PretrainStage, tok, recipe_dir: Path | None, reports: dict
               ) -> tuple[Iterator[tuple[str, str | None, list[int] | None]], object | None]:
    """(source, text, ids) per document: text when FIM/own tokenization applies, ids from the mixture."""
    def stream(src: DocSource) -> Iterator[str]:
        reports[src.name] = CorpusReport(src.name)
        return stream_source(src.format, source_path(src, recipe_dir), src.options, reports[src.name])

    mixing = len(cfg.data) > 1 or any(s.share is not None for s in cfg.data)
    if not mixing:
        src = cfg.data[0]
        return ((src.name, text, None) for text in stream(src)), None
    from herd.data.transforms.mixture import Source, mix_stream

    sources = [Source(name=s.name, docs=(lambda s=s: stream(s)), share=1.0 if s.share is None else s.share)
               for s in cfg.data]
    # held-out documents leave the stream: ask the mixture for enough that the training rows fill the budget
    # (the row writer stops there; the mixture interleaves by deficit, so shares hold along the stream)
    total = int(cfg.total_tokens / (1 - cfg.heldout_fraction) * 1.02) + cfg.max_len if cfg.total_tokens else None
    mix = mix_stream(sources, tok, total, cfg.seed, doc_overhead=1)  # +1: the separator
    return ((name, None, ids) for name, ids in mix), mix.report


def check_decontamination(cfg: PretrainStage, recipe_dir: Path | None = None) -> dict:
    """Stream every source once against the stage's test sets; a leak raises DataError naming the test id."""
    if not cfg.decontaminate:
        return {}
    from itertools import chain

    from herd.data.documents.pubmedqa import assert_no_leakage, pubmedqa_test_texts

    tests = list(chain.from_iterable(pubmedqa_test_texts(resolve_data_path(t.path, recipe_dir))
                                     for t in cfg.decontaminate))
    docs = chain.from_iterable(stream_source(s.format, source_path(s, recipe_dir), s.options, CorpusReport(s.name))
                               for s in cfg.data)
    res = assert_no_leakage(docs, tests, source=f"stage {cfg.name} documents")
    return {"test_sets": [t.name for t in cfg.decontaminate], **res}


def build_rows(cfg: PretrainStage, tok, work: Path, *, recipe_dir: Path | None = None, progress: bool = True
               ) -> tuple[RowSet, RowSet, dict]:
    """Stream the sources into train and held-out row files (reused when the key matches)."""
    from herd.data.transforms.fim import FIMStats, document_ids, sentinel_ids

    key = sha256_json({"stage": cfg.model_dump(mode="json"), "vocab": len(tok)})
    meta_path = work / "rows.json"
    train_path, held_path = work / "rows.u32", work / "heldout.u32"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        meta = json.loads(meta_path.read_text())
        return RowSet(train_path, cfg.max_len), RowSet(held_path, cfg.max_len), meta["report"]
    work.mkdir(parents=True, exist_ok=True)
    decontamination = check_decontamination(cfg, recipe_dir)
    sep = separator_id(tok, cfg.separator)
    ids_fim = sentinel_ids(tok) if cfg.fim else None
    rng = random.Random(cfg.fim.seed if cfg.fim else 0)
    stats = FIMStats()
    budget_rows = -(-cfg.total_tokens // cfg.max_len) if cfg.total_tokens else None
    writer = _RowWriter(train_path, cfg.max_len, budget_rows)
    held = _RowWriter(held_path, cfg.max_len, cfg.heldout_max_rows)
    reports: dict[str, CorpusReport] = {}
    docs, mix_report = _documents(cfg, tok, recipe_dir, reports)
    per_source: dict[str, dict] = {}
    n_docs = 0
    bar = Progress(total=budget_rows, desc=f"{cfg.name} rows", unit="row", enabled=progress)
    for name, text, ids in docs:
        bar.update(writer.rows - bar.n)
        if writer.full:
            break
        n_docs += 1
        acc = per_source.setdefault(name, {"documents": 0, "tokens": 0, "heldout_documents": 0})
        hkey = text.encode("utf-8") if text is not None else np.asarray(ids, dtype=np.uint32).tobytes()
        if _heldout(hkey, cfg.heldout_fraction):
            acc["heldout_documents"] += 1
            if not held.full:
                held.add((ids if ids is not None else tok(text, add_special_tokens=False)["input_ids"]) + [sep])
            continue
        if ids is None:
            ids = document_ids(tok, text, ids=ids_fim, rate=cfg.fim.rate if cfg.fim else 0.0,
                               spm_rate=cfg.fim.spm_rate if cfg.fim else 0.0, room=cfg.max_len - len(writer.buf), rng=rng,
                               stats=stats, spm_encoding=cfg.fim.spm_encoding if cfg.fim else "joint")
        acc["documents"] += 1
        acc["tokens"] += len(ids) + 1
        writer.add(ids + [sep])
    writer.close()
    held.close()
    bar.update(writer.rows - bar.n)
    bar.close()
    if writer.rows == 0:
        raise HerdError(f"stage {cfg.name}: the sources hold fewer than {cfg.max_len} tokens (one row)")
    report = {"rows": writer.rows, "row_len": cfg.max_len, "tokens": writer.rows * cfg.max_len,
              "documents_read": n_docs, "heldout_rows": held.rows, "per_source": per_source,
              "corpus": {k: r.as_dict() for k, r in reports.items()},
              "separator": tok.convert_ids_to_tokens(sep),
              "budget_reached": writer.full}
    if cfg.fim:
        report["fim"] = stats.as_dict()
    if mix_report is not None:
        report["mixture"] = mix_report.as_dict()
    if decontamination:
        report["decontamination"] = decontamination
    meta_path.write_text(json.dumps({"key": key, "report": report}, indent=2) + "\n")
    return RowSet(train_path, cfg.max_len), RowSet(held_path, cfg.max_len), report


def set_rope_theta(model, theta: float, max_len: int) -> None:
    """LCFT: a new RoPE base period (no position interpolation), recorded in the config."""
    cfg = model.config
    params = dict(getattr(cfg, "rope_parameters", None) or {"rope_type": "default"})
    params["rope_theta"] = float(theta)
    cfg.rope_parameters = params
    cfg.max_position_embeddings = max(int(cfg.max_position_embeddings), int(max_len))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    rot = inner.model.rotary_emb
    inner.model.rotary_emb = type(rot)(config=cfg).to(next(model.parameters()).device)


def prepare_model(model, tok, cfg: PretrainStage) -> None:
    """The stage's model changes, in a fixed order so a rebuilt model matches the trained one."""
    if cfg.fim is not None:
        import torch

        from herd.data.transforms.fim import add_sentinels

        with torch.random.fork_rng(devices=[]):  # resizing must not move the global RNG: seeded, so reruns match
            torch.manual_seed(cfg.seed)
            add_sentinels(tok, model)
    if cfg.rope_theta is not None:
        set_rope_theta(model, cfg.rope_theta, cfg.max_len)


def run_pretrain(cfg: PretrainStage, parent: BaseRef, template: Template, out: Path, *, name: str,
                 resume: bool = False, recipe: dict | None = None, progress: bool = True,
                 recipe_dir: Path | None = None) -> tuple[Path, dict]:
    """Train and write the artifact at ``out``; returns (path, training summary)."""
    from herd.engine.heldout import heldout_loss

    rank, world = dist_env()
    tok = load_tokenizer(parent)
    if cfg.fim is not None:
        from herd.data.transforms.fim import add_sentinels

        add_sentinels(tok, None)  # the rows are built with the sentinel ids the model will have
    work = out.with_name(out.name + ".work")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    rows, held, report = build_rows(cfg, tok, work, recipe_dir=recipe_dir, progress=progress and rank == 0)
    if rank == 0:
        fim = report.get("fim")
        print(f"[{cfg.name}] data: {report['rows']} rows x {cfg.max_len} tokens from {report['documents_read']} "
              f"documents; {report['heldout_rows']} held-out rows"
              + (f"; FIM psm {fim['psm']} / spm {fim['spm']} of {fim['documents']} documents "
                 f"({fim['cut']} kept plain: they would be cut across rows)" if fim else ""), flush=True)
        for r in report["corpus"].values():
            drops = ", ".join(f"{n} {why}" for why, n in sorted(r["dropped"].items())) or "none"
            print(f"[{cfg.name}] corpus {r['source']}: {r['kept']} of {r['seen']} documents kept "
                  f"({r['bytes']:,} bytes); dropped: {drops}", flush=True)
    model, backend = load_for_training(parent, cfg)
    pad = tok.pad_token_id if tok.pad_token_id is not None else separator_id(tok, "auto")
    heldout = {}
    if len(held) and rank == 0:
        heldout["parent"] = heldout_loss(model, list(held), pad, row_len=cfg.max_len, progress=progress,
                                         desc=f"{cfg.name} held-out loss, parent")
    prepare_model(model, tok, cfg)
    if cfg.method != "full":
        model = add_adapter(model, cfg)
        if cfg.fim is not None:  # new tokens must learn their embeddings: train them with the adapter
            for n, p in model.named_parameters():
                if "embed_tokens" in n or "lm_head" in n:
                    p.requires_grad_(True)
    result = train(model, rows, loop_config(cfg, progress), work, pad_id=pad, resume=resume)
    if len(held) and rank == 0:
        heldout["derived"] = heldout_loss(model, list(held), pad, row_len=cfg.max_len, progress=progress,
                                          desc=f"{cfg.name} held-out loss, derived")
    summary = {"steps": result.steps, "tokens": result.tokens, "trained_tokens": result.trained_tokens,
               "seconds": round(result.seconds, 1), "tokens_per_s": round(result.tokens_per_s, 1),
               "final_loss": result.history[-1]["loss"] if result.history else None,
               "first_loss": result.history[0]["loss"] if result.history else None,
               "data": report, "world_size": world, "backend": backend | {"loss": loss_kernel_name()}}
    if heldout:
        if "parent" in heldout and "derived" in heldout:  # paired over the same held-out rows
            from herd.core.paired import paired, ratio_stat

            heldout["paired"] = paired(heldout["parent"]["per_record"], heldout["derived"]["per_record"],
                                       better="lower", stat=ratio_stat)
        summary["heldout"] = {role: {k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()
                                     if k != "per_record"} for role, h in heldout.items()}
    publish_stage(cfg, model, tok, template, parent, result, summary, out, work, name=name, recipe=recipe,
                  data=[{"name": s.name, "path": s.path, "format": s.format, "share": s.share} for s in cfg.data],
                  data_report=report, prepare_plain=lambda m: prepare_model(m, load_tokenizer(parent), cfg))
    return out, summary


STAGE_CHECKS.add("pretrain", check_sources)  # every source readable before a model loads


@STAGES.register("pretrain")
def run(cfg: PretrainStage, ctx: StageContext) -> tuple[Path, dict]:
    """The registered entry point: ``herd derive`` calls every stage kind this way."""
    return run_pretrain(cfg, ctx.parent, ctx.template, ctx.out, name=ctx.name, resume=ctx.resume, recipe=ctx.recipe,
                        progress=ctx.progress, recipe_dir=ctx.recipe_dir)
