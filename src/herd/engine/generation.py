"""Batched generation in an artifact's own template, stopping at the template's stops."""

from __future__ import annotations

import torch

from herd.core.progress import Progress
from herd.templates.base import truncate


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, stop: list[str] | None = None, batch_size: int = 8, seed: int = 0,
             progress: bool = False, desc: str = "generate") -> list[str]:
    """Completions of ``prompts`` (already rendered by a template); left-padded batches.

    ``progress``: report completions done under ``desc`` (off by default: callers that loop over
    chunks report their own progress)."""
    stop = [s for s in (stop or []) if s]
    eos_ids = sorted({i for s in stop if (i := tokenizer.convert_tokens_to_ids(s)) is not None
                      and i != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(i) == s}
                     | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
    text_stops = [s for s in stop if tokenizer.convert_tokens_to_ids(s) not in eos_ids]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs: list[str] = []
    model.eval()
    bar = Progress(total=len(prompts), desc=desc, unit="completion", enabled=progress)
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=eos_ids or None,
                          **sampling_kwargs(temperature, top_p, seed + i, text_stops, tokenizer))
            with torch.no_grad():
                gen = model.generate(**enc, **kwargs)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                outs.append(cut_at_stop(text, text_stops))
            bar.update(len(chunk))
    finally:
        tokenizer.padding_side = old_side
        bar.close(failed=len(outs) < len(prompts))
    return outs


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The reply before its first stop string, stripped."""
    return truncate(text, stops).strip()


def model_responder(spec: str, *, temperature: float, max_new_tokens: int, seed: int = 0):
    """``respond(messages) -> reply``: one sampled reply from ``spec`` in its own template."""
    from herd.artifacts import artifact_path, artifact_template
    from herd.base import load_model, load_tokenizer, resolve_base

    ref = resolve_base(artifact_path(spec))
    tok, model = load_tokenizer(ref), load_model(ref)
    template = artifact_template(ref.path, tok)
    calls = [0]

    def respond(messages: list[dict]) -> str:
        calls[0] += 1
        prompt = template.prompt(messages, tok)
        reply = generate(model, tok, [prompt], max_new_tokens=max_new_tokens, temperature=temperature,
                         stop=template.stop_strings(tok), seed=seed + calls[0])[0]
        return reply or "…"  # an empty sample would make an empty turn; keep the record renderable

    return respond


def sampling_kwargs(temperature: float, top_p: float, seed: int, stops, tokenizer) -> dict:
    """``model.generate`` settings: sampling seeded with ``seed`` when ``temperature > 0``, else greedy;
    text stop strings when given."""
    if temperature > 0:
        torch.manual_seed(seed)
        kwargs: dict = dict(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs = dict(do_sample=False)
    if stops:
        kwargs.update(stop_strings=list(stops), tokenizer=tokenizer)
    return kwargs
