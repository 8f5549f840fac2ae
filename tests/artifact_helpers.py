"""A herd artifact from the tiny base (random 2-layer Llama, real tokenizer), as tests need one."""

from __future__ import annotations

from pathlib import Path


def make_tiny_artifact(folder: Path, name: str, *, template: str = "chatml", extra_tokens: list[str] | None = None,
                       recipe: dict | None = None, model=None, scorecard: dict | None = None) -> Path:
    """Save ``model`` (default: the tiny base) with the tiny tokenizer and ``template`` as an artifact."""
    from herd.artifacts import new_lineage, save_model_folder, template_record, write_lineage
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.templates import get_template

    ref = resolve_base("tiny")
    tok, t = load_tokenizer(ref), get_template(template)
    model = model if model is not None else load_model(ref)
    if extra_tokens:
        tok.add_special_tokens({"additional_special_tokens": extra_tokens})
        model.resize_token_embeddings(len(tok))
    save_model_folder(model, tok, t, folder)
    lineage = new_lineage(name, parent=ref.describe(), template=template_record(t, tok), recipe=recipe)
    if scorecard is not None:
        lineage["scorecard"] = scorecard
    write_lineage(folder, lineage)
    return folder
