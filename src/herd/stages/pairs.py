"""What the alignment stages share: reading their data, encoding pairs, and writing the artifact."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import ConfigError, HerdError
from herd.data.readers.preference import PreferencePair, dedupe_items, load_sources, split_items
from herd.data.report import DataReport
from herd.engine.logprobs import Encoded, encode_reply
from herd.templates import Template, TemplateError


def recipe_dir(recipe: dict | None) -> Path | None:
    """Relative data paths resolve against the recipe file's folder, as ``herd derive`` does."""
    f = (recipe or {}).get("file")
    return Path(f).parent if f else None


@dataclass
class PairData:
    train: list[PreferencePair]
    evals: list[PreferencePair]
    records: list[dict]  # per file: name, path, sha256, records (lineage)
    report: DataReport
    duplicates: int = 0


def load_pair_data(cfg, recipe: dict | None) -> PairData:
    """A pairwise stage's data: read + validate, dedupe, deterministic held-out split, optional cap."""
    report = DataReport()
    items, records = load_sources(cfg.data, relative_to=recipe_dir(recipe), report=report)
    bad = [x for x in items if not isinstance(x, PreferencePair)]
    if bad:
        raise ConfigError(f"stage {cfg.name}: needs preference pairs, but {bad[0].source} holds labelled "
                          "single replies (format kto)")
    items, dups = dedupe_items(items)
    train, evals = split_items(items, cfg.eval_size, cfg.split_seed)
    if cfg.max_train_pairs:
        train = train[: cfg.max_train_pairs]
    return PairData(train, evals, records, report, dups)


@dataclass
class EncodedPairs:
    pairs: list[PreferencePair] = field(default_factory=list)
    chosen: list[Encoded] = field(default_factory=list)
    rejected: list[Encoded] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.pairs)


def encode_pairs(pairs: list[PreferencePair], template: Template, tokenizer, max_len: int) -> EncodedPairs:
    """Render both sides of every pair. A pair with a side over ``max_len`` is dropped, not cut (a cut
    reply would be compared on an arbitrary prefix), and counted; so is one the template refuses."""
    out = EncodedPairs()
    for p in pairs:
        try:
            c = encode_reply(template, tokenizer, p.prompt, p.chosen)
            r = encode_reply(template, tokenizer, p.prompt, p.rejected)
        except TemplateError as e:
            out.dropped[f"template refused it ({e})"] += 1
            continue
        if max(len(c), len(r)) > max_len:
            out.dropped[f"longer than max_len {max_len} tokens"] += 1
            continue
        if c.n_reply == 0 or r.n_reply == 0:
            out.dropped["no reply tokens"] += 1
            continue
        out.pairs.append(p)
        out.chosen.append(c)
        out.rejected.append(r)
    return out


def require_pairs(enc: EncodedPairs, stage: str, what: str) -> None:
    if not enc.pairs:
        raise HerdError(f"stage {stage}: no usable {what} pairs (dropped: {dict(enc.dropped) or 'none'})")


def load_encoded_pairs(cfg, recipe: dict | None, template: Template, tokenizer, progress: bool
                       ) -> tuple[PairData, EncodedPairs, EncodedPairs]:
    """A pair stage's data, read, split and encoded (reward model, DPO), with the one-line report."""
    data = load_pair_data(cfg, recipe)
    train = encode_pairs(data.train, template, tokenizer, cfg.max_len)
    held = encode_pairs(data.evals, template, tokenizer, cfg.max_len)
    require_pairs(train, cfg.name, "training")
    if progress:
        print(f"[{cfg.name}] {len(train)} training / {len(held)} held-out pairs"
              + (f"; dropped {dict(train.dropped)}" if train.dropped else ""))
    return data, train, held
