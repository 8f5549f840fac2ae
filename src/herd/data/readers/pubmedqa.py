"""PubMedQA PQA-L questions as fine-tuning records, Meditron's per-benchmark SFT (recipes.md §4.4, Table 5).

One record per non-test question: the system message is Meditron's PubMedQA instruction, the user turn
the item as the evaluation shows it (the abstract's contexts, then the question: upstream
``ClosedPubMedQA``), the trained assistant turn the expert label ``yes``/``no``/``maybe``.

``split: train`` (default) gives the non-test questions outside the dev split, ``split: dev`` the dev
split (:func:`herd.data.documents.pubmedqa.pqal_splits`: ``dev_size`` non-test PMIDs by seeded hash).
The official test split is never read as records: asking for it is an error, and every record's
text is checked against the test contexts and long answers (:func:`assert_no_leakage`) before it is
returned, so a test abstract under another PMID is refused too.
"""

from __future__ import annotations

from pathlib import Path

from herd.core.errors import ConfigError, DataError
from herd.data.records import Example, register_reader


@register_reader("pubmedqa")
def read_pubmedqa(path: str | Path, *, split: str = "train", dev_size: int = 100, split_seed: int = 42,
                  instruction: str | None = None) -> list[Example]:
    from herd.data.documents.pubmedqa import (
        PUBMEDQA_INSTRUCTION,
        assert_no_leakage,
        load_pqal,
        pqal_splits,
        pubmedqa_prompt,
        pubmedqa_test_texts,
    )

    if split not in ("train", "dev"):
        raise ConfigError(f"pubmedqa reader: split must be train or dev, got '{split}' (the official test split is "
                          "never training data; the pubmedqa eval reads it)")
    records = load_pqal(path)
    parts = pqal_splits(path, dev_size=dev_size, seed=split_seed)
    test = set(parts["test"])
    pmids = parts[split]
    leaked = sorted(test.intersection(pmids))
    if leaked:  # pqal_splits cannot produce this; the check stays next to the data it guards
        raise DataError(str(path), f"test PMIDs {leaked[:5]} in the {split} split")
    out = []
    for index, pmid in enumerate(pmids):
        r = records[pmid]
        out.append(Example(messages=[{"role": "system", "content": instruction or PUBMEDQA_INSTRUCTION},
                                     {"role": "user", "content": pubmedqa_prompt(r)},
                                     {"role": "assistant", "content": r["final_decision"]}],
                           source=str(path), index=index, meta={"pmid": pmid, "split": split}))
    assert_no_leakage((ex.messages[1]["content"] for ex in out), pubmedqa_test_texts(path),
                      source=f"{path} ({split} split)")
    return out
