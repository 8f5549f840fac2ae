"""Test helper: a tiny-base artifact that has really learned fixed replies (a few seconds of training).

A random tiny model answers noise (mostly newlines); chat stops, history rendering and judge verdicts
need a model that says something definite, so one is trained, not mocked: the tiny Llama is fitted on
the given conversations in a template's own render (loss on the replies only) and saved as a herd
artifact whose lineage names that template.
"""

from __future__ import annotations

from pathlib import Path

import torch


def memorized_artifact(folder: Path, template_name: str, conversations: list[list[dict]], *, steps: int = 60,
                       lr: float = 5e-3, name: str = "memorized") -> Path:
    from herd.artifacts import new_lineage, save_model_folder, template_record, write_lineage
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.templates import IGNORE_INDEX, get_template

    ref = resolve_base("tiny")
    tok, model, t = load_tokenizer(ref), load_model(ref), get_template(template_name)
    torch.manual_seed(0)
    rows = [t.render(c, tok) for c in conversations]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        for r in rows:  # logits only where a reply token is predicted: the 49K-way head is the cost
            labels = torch.tensor(r.labels[1:])
            pos = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
            hidden = model.model(input_ids=torch.tensor([r.input_ids])).last_hidden_state[0]
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[pos]), labels[pos])
            loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    save_model_folder(model, tok, t, folder)
    write_lineage(folder, new_lineage(name, parent=ref.describe(), template=template_record(t, tok)))
    return folder
