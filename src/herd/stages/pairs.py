"""What the alignment stages share: reading their data, encoding pairs, and writing the artifact."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import ConfigError, HerdError
from herd.core.jsonlines import json_lines
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


SAMPLES_FILE = "rejection_samples.jsonl"  # a rejection_sampling artifact's record of every prompt (written there, read by pairs_from)


def sample_pairs(path: Path, min_gap: float = 0.0, report: DataReport | None = None) -> list[PreferencePair]:
    """Preference pairs from a rejection-sampling stage's samples: per prompt, the highest-reward sample
    chosen and the lowest rejected (a sample cut at the token cap is marked open). Largest gap first.
    Skipped, and counted in ``report``: a prompt whose best sample is empty, whose two are the same
    text, or whose reward gap is below ``min_gap``."""
    report = report if report is not None else DataReport()
    out, lines = [], [x for x in json_lines(path.read_text(encoding="utf-8")) if x.strip()]
    for n, line in enumerate(lines, 1):
        row = json.loads(line)
        replies, rewards, finished = row["replies"], row["rewards"], row.get("finished") or [True] * len(row["replies"])
        hi = max(range(len(rewards)), key=lambda i: (rewards[i], -i))  # ties: the first, as select_best
        lo = min(range(len(rewards)), key=lambda i: (rewards[i], i))
        place = f"{path}:{n}"
        gap = rewards[hi] - rewards[lo]
        if not replies[hi].strip():
            report.dropped("pairs_from", "best sample empty", place)
        elif replies[hi] == replies[lo]:
            report.dropped("pairs_from", "best and worst sample alike", place)
        elif gap < min_gap:
            report.dropped("pairs_from", f"reward gap below {min_gap}", place)
        else:
            out.append(PreferencePair(prompt=row["prompt"], chosen=replies[hi], rejected=replies[lo], source=str(path),
                                      index=n - 1, line=n, meta={"reward_gap": round(gap, 5)},
                                      chosen_open=not finished[hi], rejected_open=not finished[lo]))
    report.size("pairs_from", n_in=len(lines), n_out=len(out))
    return sorted(out, key=lambda p: -p.meta["reward_gap"])


def _earlier_samples(cfg, earlier: dict[str, Path] | None) -> Path:
    folder = (earlier or {}).get(cfg.pairs_from)
    if folder is None:
        raise HerdError(f"stage {cfg.name}: pairs_from '{cfg.pairs_from}' has not run before it in this derivation")
    path = Path(folder) / SAMPLES_FILE
    if not path.is_file():
        raise HerdError(f"stage {cfg.name}: pairs_from '{cfg.pairs_from}': {path} not found (is it a "
                        "rejection_sampling stage's artifact?)")
    return path


def load_pair_data(cfg, recipe: dict | None, earlier: dict[str, Path] | None = None) -> PairData:
    """A pairwise stage's data: read + validate, dedupe, deterministic held-out split, optional cap.
    ``earlier`` (this run's finished stages by name) serves a DPO stage's ``pairs_from``."""
    report = DataReport()
    items, records = load_sources(cfg.data, relative_to=recipe_dir(recipe), report=report)
    if getattr(cfg, "pairs_from", None):
        from herd.core.hashing import sha256_file

        path = _earlier_samples(cfg, earlier)
        sampled = sample_pairs(path, cfg.min_reward_gap, report)
        items = sampled + items
        records.insert(0, {"name": f"{cfg.pairs_from} samples", "path": str(path), "sha256": sha256_file(path),
                           "records": len(sampled)})
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
            c = encode_reply(template, tokenizer, p.prompt, p.chosen, p.chosen_open)
            r = encode_reply(template, tokenizer, p.prompt, p.rejected, p.rejected_open)
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


def load_encoded_pairs(cfg, recipe: dict | None, template: Template, tokenizer, progress: bool,
                       earlier: dict[str, Path] | None = None) -> tuple[PairData, EncodedPairs, EncodedPairs]:
    """A pair stage's data, read, split and encoded (reward model, DPO), with the one-line report."""
    data = load_pair_data(cfg, recipe, earlier)
    train = encode_pairs(data.train, template, tokenizer, cfg.max_len)
    held = encode_pairs(data.evals, template, tokenizer, cfg.max_len)
    require_pairs(train, cfg.name, "training")
    if progress:
        print(f"[{cfg.name}] {len(train)} training / {len(held)} held-out pairs"
              + (f"; dropped {dict(train.dropped)}" if train.dropped else ""))
    return data, train, held
