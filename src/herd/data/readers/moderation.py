"""Labelled safety data in the OpenAI moderation format, mapped onto a guard taxonomy.

A record is ``{"prompt": str, "S": 0|1, "H": 0|1, …}`` (openai/moderation-api-release, dossier §6.4
[R G4]); a missing label key means *unknown*, not negative. herd also accepts an optional
``"response"``: the record then asks for response classification (``Agent``) instead of prompt
classification (``User``).

Label mapping onto Llama Guard v1 (:data:`DEFAULT_LABEL_MAP`; the reader option ``label_map``
replaces it, ``null`` ignores a label):

| OpenAI label | meaning            | Llama Guard v1 category |
|--------------|--------------------|-------------------------|
| S            | sexual             | O2 Sexual Content       |
| S3           | sexual/minors      | O2 Sexual Content       |
| H            | hate               | O1 Violence and Hate    |
| H2           | hate/threatening   | O1 Violence and Hate    |
| V            | violence           | O1 Violence and Hate    |
| V2           | violence/graphic   | O1 Violence and Hate    |
| HR           | harassment         | O1 Violence and Hate (its "demeaning sentiments … insults" bullets) |
| SH           | self-harm          | O6 Self-Harm            |
O3 Criminal Planning, O4 Guns and Illegal Weapons and O5 Regulated or Controlled Substances have no
OpenAI label: the data never marks them violated.

Binary label (what AUPRC is computed on, §6.4): unsafe when any label is 1; missing labels count as
not violated. A category's label is *known* for a record when at least one label mapping to it is
present. A violation of a category the taxonomy lacks is "a category we're not trying to detect":
the training target is then ``safe`` (the paper's augmentation (b) semantics).

Split (deterministic, by content hash and seed, independent of file order): ``test_size`` records,
then ``dev_size``, the rest train. Training records get the paper's augmentations (§6.3, llama-recipes
``finetuning_data_formatter``), each drawn from an RNG seeded by the record's content: (a) a copy
with a random subset of NON-violated categories dropped; (b) for unsafe records, a copy with ALL
violated (plus random other) categories dropped, relabelled ``safe``; (c) category order (hence
codes) shuffled in every training prompt.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import ConfigError
from herd.data.records import DataError, Example, read_json_records, register_reader, require_str
from herd.templates.taxonomy import Taxonomy, load_taxonomy

OPENAI_LABELS = {"S": "sexual", "H": "hate", "V": "violence", "HR": "harassment", "SH": "self-harm",
                 "S3": "sexual/minors", "H2": "hate/threatening", "V2": "violence/graphic"}
DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "S": "Sexual Content", "S3": "Sexual Content", "H": "Violence and Hate", "H2": "Violence and Hate",
    "V": "Violence and Hate", "V2": "Violence and Hate", "HR": "Violence and Hate", "SH": "Self-Harm"}
SPLITS = ("train", "dev", "test", "all")


@dataclass
class ModerationRecord:
    prompt: str
    response: str | None
    labels: dict[str, int]  # present labels only (missing = unknown)
    source: str
    index: int
    line: int | None = None

    @property
    def unsafe(self) -> bool:
        return any(v == 1 for v in self.labels.values())

    def key(self) -> str:
        return f"{self.prompt}\x00{self.response or ''}"

    def messages(self) -> list[dict]:
        msgs = [{"role": "user", "content": self.prompt}]
        if self.response is not None:
            msgs.append({"role": "assistant", "content": self.response})
        return msgs


@dataclass
class LabelMapping:
    """Source labels → taxonomy category names (None = ignored)."""

    taxonomy: Taxonomy
    label_map: dict[str, str | None] = field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))

    def violated(self, rec: ModerationRecord) -> list[str]:
        """Violated categories in taxonomy order."""
        hit = {self.label_map.get(k) for k, v in rec.labels.items() if v == 1}
        return [n for n in self.taxonomy.names if n in hit]

    def known(self, rec: ModerationRecord) -> set[str]:
        return {c for k, c in self.label_map.items() if c and k in rec.labels}

    def mapped(self) -> set[str]:
        """Categories some label maps to (the only ones per-category metrics exist for)."""
        return {c for c in self.label_map.values() if c}


def make_mapping(taxonomy: Taxonomy, label_map: dict | None) -> LabelMapping:
    """Validate a user label map against the taxonomy. The default map silently skips categories the
    taxonomy lacks (their labels then mark violations the guard is not asked about)."""
    if label_map is None:
        return LabelMapping(taxonomy, {k: (v if v in taxonomy.names else None) for k, v in DEFAULT_LABEL_MAP.items()})
    if not isinstance(label_map, dict) or not label_map:
        raise ConfigError("label_map: give a mapping of label key → category name (or null)")
    for k, v in label_map.items():
        if v is not None and v not in taxonomy.names:
            raise ConfigError(f"label_map.{k}: '{v}' is not a category of the taxonomy "
                              f"(have: {', '.join(taxonomy.names)})")
    return LabelMapping(taxonomy, dict(label_map))


def read_moderation_records(path: str | Path, label_keys: list[str] | None = None) -> list[ModerationRecord]:
    """Validated records; errors name file, line, record and field. A text that occurs twice is kept
    once with the union of its labels."""
    keys = set(label_keys or DEFAULT_LABEL_MAP)
    out: list[ModerationRecord] = []
    seen: dict[str, ModerationRecord] = {}
    for i, (line, rec) in enumerate(read_json_records(path)):
        if not isinstance(rec, dict):
            raise DataError(str(path), f"expected a JSON object, got {type(rec).__name__}", record=i, line=line)
        prompt = require_str(path, rec, "prompt", index=i, line=line)
        response = None
        if "response" in rec:
            response = require_str(path, rec, "response", index=i, line=line)
        labels = {}
        for k, v in rec.items():
            if k in ("prompt", "response"):
                continue
            if k not in keys:
                raise DataError(str(path), f"unknown key (labels are {', '.join(sorted(keys))}; map new labels "
                                "with the label_map option)", record=i, line=line, field=k)
            if v is None:
                continue
            if v not in (0, 1) or isinstance(v, float):
                raise DataError(str(path), f"a label is 0, 1, true, false or null, got {v!r}", record=i, line=line,
                                field=k)
            labels[k] = int(v)
        if not labels:
            raise DataError(str(path), f"no labels (give at least one of {', '.join(sorted(keys))})", record=i,
                            line=line)
        r = ModerationRecord(prompt, response, labels, str(path), i, line)
        if r.key() in seen:  # the same text labelled twice: merge (a label 1 anywhere wins)
            first = seen[r.key()]
            for k, v in labels.items():
                first.labels[k] = max(v, first.labels.get(k, 0))
            continue
        seen[r.key()] = r
        out.append(r)
    return out


def split_records(records: list[ModerationRecord], *, dev_size: int, test_size: int, seed: int
                  ) -> dict[str, list[ModerationRecord]]:
    """test / dev / train by content-hash rank; each side keeps file order."""
    if dev_size < 0 or test_size < 0:
        raise ConfigError("dev_size and test_size must be >= 0")
    rank = sorted(range(len(records)),
                  key=lambda i: hashlib.sha256(f"{seed}\x00{records[i].key()}".encode()).hexdigest())
    test, dev = set(rank[:test_size]), set(rank[test_size:test_size + dev_size])
    return {"test": [r for i, r in enumerate(records) if i in test],
            "dev": [r for i, r in enumerate(records) if i in dev],
            "train": [r for i, r in enumerate(records) if i not in test and i not in dev],
            "all": list(records)}


def verdict_text(codes: list[str]) -> str:
    """``safe`` or ``unsafe`` + newline + comma-separated codes (sorted, as llama-recipes does)."""
    return "unsafe\n" + ",".join(sorted(codes)) if codes else "safe"


def guard_example(rec: ModerationRecord, mapping: LabelMapping, shown: list[str], *, kind: str,
                  descriptions: bool = True, with_verdict: bool = True) -> Example:
    """One prompt/verdict pair: the categories ``shown`` (in that order, codes O1…) and the verdict
    over exactly those categories."""
    cats = mapping.taxonomy.prompt_categories(shown, descriptions=descriptions)
    violated = set(mapping.violated(rec))
    codes = [c["code"] for c in cats if c["name"] in violated]
    msgs = rec.messages()
    msgs[0]["categories"] = cats
    if with_verdict:
        msgs.append({"role": "verdict", "content": verdict_text(codes)})
    return Example(msgs, rec.source, rec.index, meta={
        "kind": kind, "unsafe": rec.unsafe, "violated": sorted(violated & set(shown)), "labels": rec.labels})


def layout_pool(names: list[str], size: int, seed: int, *, shuffle_codes: bool = True) -> list[list[str]]:
    """``size`` category layouts (which categories a prompt shows, in which order) drawn once: a quarter
    (at least one) show every category, the rest a random non-empty proper subset. Examples drawn from a
    small pool share their prompt's leading tokens, so shared-prefix training computes them once."""
    rng = random.Random(f"layouts:{seed}")
    out = []
    for k in range(size):
        chosen = list(names) if k < max(1, size // 4) else rng.sample(names, rng.randint(1, max(1, len(names) - 1)))
        chosen = [n for n in names if n in chosen]
        if shuffle_codes:
            rng.shuffle(chosen)
        out.append(chosen)
    return out


def _pooled_copies(rec: ModerationRecord, mapping: LabelMapping, pool: list[list[str]], rng: random.Random, *,
                   drop_nonviolated: bool, drop_violated: bool, descriptions: bool) -> list[Example]:
    """The paper's copies with layouts drawn from ``pool``: the original shows every category; (a) any
    layout holding all violated categories (the label is unchanged); (b) for unsafe records, a layout
    holding none of them, relabelled ``safe``. A copy with no fitting layout in the pool is left out."""
    violated = set(mapping.violated(rec))
    full = [lay for lay in pool if len(lay) == len(mapping.taxonomy.names)]
    out = [guard_example(rec, mapping, rng.choice(full), kind="original", descriptions=descriptions)]
    keep = [lay for lay in pool if violated <= set(lay)]
    if drop_nonviolated and keep:
        out.append(guard_example(rec, mapping, rng.choice(keep), kind="drop_nonviolated", descriptions=descriptions))
    drop = [lay for lay in pool if not violated & set(lay)]
    if drop_violated and violated and drop:
        out.append(guard_example(rec, mapping, rng.choice(drop), kind="drop_violated", descriptions=descriptions))
    return out


def augmented_examples(rec: ModerationRecord, mapping: LabelMapping, *, seed: int, shuffle_codes: bool = True,
                       drop_nonviolated: bool = True, drop_violated: bool = True, descriptions: bool = True,
                       pool: list[list[str]] | None = None) -> list[Example]:
    """The original plus the paper's augmented copies of one training record (deterministic); with
    ``pool``, their category layouts come from that fixed set (:func:`layout_pool`)."""
    rng = random.Random(hashlib.sha256(f"{seed}\x00{rec.key()}".encode()).hexdigest())
    if pool:
        return _pooled_copies(rec, mapping, pool, rng, drop_nonviolated=drop_nonviolated,
                              drop_violated=drop_violated, descriptions=descriptions)
    names = mapping.taxonomy.names
    violated = mapping.violated(rec)
    nonviolated = [n for n in names if n not in violated]

    def order(chosen: list[str]) -> list[str]:
        chosen = [n for n in names if n in chosen]
        if shuffle_codes:
            rng.shuffle(chosen)
        return chosen

    out = [guard_example(rec, mapping, order(names), kind="original", descriptions=descriptions)]
    if drop_nonviolated:
        n_drop = rng.randint(0, len(nonviolated))
        if n_drop == len(names):  # keep at least one category
            n_drop -= 1
        dropped = set(rng.sample(nonviolated, n_drop))
        out.append(guard_example(rec, mapping, order([n for n in names if n not in dropped]),
                                 kind="drop_nonviolated", descriptions=descriptions))
    if drop_violated and violated and nonviolated:
        dropped = set(rng.sample(nonviolated, rng.randint(0, len(nonviolated) - 1)))
        kept = [n for n in nonviolated if n not in dropped]
        ex = guard_example(rec, mapping, order(kept), kind="drop_violated", descriptions=descriptions)
        out.append(ex)
    return out


@register_reader("moderation")
def read_moderation(path, *, split: str = "train", dev_size: int = 100, test_size: int = 250,
                    split_seed: int = 42, taxonomy: str | dict | None = None, label_map: dict | None = None,
                    augment: bool = True, shuffle_codes: bool = True, drop_nonviolated: bool = True,
                    drop_violated: bool = True, descriptions: bool = True, seed: int = 42,
                    layouts: int = 0) -> list[Example]:
    """Guard training examples from a moderation-format file (the recipe's ``data:`` reader).

    ``split: train`` (default) gives the augmented training side; ``dev`` / ``test`` / ``all`` give one
    un-augmented example per record with the full taxonomy in its own order. ``layouts: K`` draws the
    augmented copies' category layouts from K fixed ones instead of anew per copy (for ``shared_prefix``
    training: examples of one layout share ~700 prompt tokens)."""
    if split not in SPLITS:
        raise ConfigError(f"moderation reader: split must be one of {', '.join(SPLITS)}, got '{split}'")
    mapping = make_mapping(load_taxonomy(taxonomy), label_map)
    records = read_moderation_records(path, list(mapping.label_map))
    part = split_records(records, dev_size=dev_size, test_size=test_size, seed=split_seed)[split]
    if not part:
        raise DataError(str(path), f"the '{split}' split is empty ({len(records)} records, dev_size {dev_size}, "
                        f"test_size {test_size})")
    if split != "train" or not augment:
        return [guard_example(r, mapping, mapping.taxonomy.names, kind="original", descriptions=descriptions)
                for r in part]
    if layouts < 0:
        raise ConfigError(f"moderation reader: layouts must be >= 0, got {layouts}")
    pool = layout_pool(mapping.taxonomy.names, layouts, seed, shuffle_codes=shuffle_codes) if layouts else None
    out: list[Example] = []
    for r in part:
        out += augmented_examples(r, mapping, seed=seed, shuffle_codes=shuffle_codes,
                                  drop_nonviolated=drop_nonviolated, drop_violated=drop_violated,
                                  descriptions=descriptions, pool=pool)
    return out
