"""A served model: an artifact, the template it was trained with, and a backend that generates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from herd.core.errors import HerdError
from herd.serve.backends import Backend


@dataclass
class ServedModel:
    """What the server knows about one model; prompts are rendered and tokenized here, for any backend."""

    id: str
    folder: Path
    lineage: dict
    template: object | None  # herd.templates.Template
    tokenizer: object
    backend: Backend
    created: int

    @property
    def stop_strings(self) -> list[str]:
        return self.template.stop_strings(self.tokenizer) if self.template else [self.tokenizer.eos_token]

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.template is None:
            raise HerdError(f"model '{self.id}' has no chat template; use /v1/completions")
        text = self.template.prompt(messages, self.tokenizer)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def completion_prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)  # the tokenizer's own BOS convention, as in training

    def card(self) -> dict:
        """The /v1/models entry: OpenAI's fields plus where the model came from."""
        lin = self.lineage
        parent = lin.get("parent") or {}
        recipe = lin.get("recipe") or {}
        return {
            "id": self.id, "object": "model", "created": self.created, "owned_by": "herd",
            "backend": self.backend.name, "context_length": self.backend.context_length,
            "lineage": {
                "id": lin.get("id"),
                "parent": {k: parent.get(k) for k in ("name", "kind", "sha256", "lineage_id") if k in parent},
                "recipe": {k: recipe.get(k) for k in ("name", "profile", "sha256") if k in recipe} or None,
                "template": (lin.get("template") or {}).get("name"),
                "weights_sha256": lin.get("weights_sha256"),
                "scorecard": lin.get("scorecard"),
            },
        }


def stop_ids(tokenizer, stops: list[str]) -> set[int]:
    """EOS plus every stop string that is one special token (ends generation at the id level)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    added = set(tokenizer.added_tokens_decoder)
    for s in stops:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) == 1 and enc[0] in added:
            ids.add(enc[0])
    return ids


def load_served(artifact: str | Path, backend: str = "transformers", *, gguf: str | Path | None = None,
                gguf_dtype: str = "f16", max_batch: int = 16, context_length: int | None = None,
                threads: int | None = None) -> ServedModel:
    """Load an artifact for serving. The llamacpp backend runs ``gguf`` or the artifact's exported GGUF,
    exporting it first (ARTIFACT/export/NAME.DTYPE.gguf) when it is missing."""
    from herd.artifacts import locate_artifact, read_lineage
    from herd.base import load_tokenizer
    from herd.templates import get_template

    folder = locate_artifact(artifact)
    lineage = read_lineage(folder)
    tok = load_tokenizer(folder)
    template = get_template(lineage["template"]["name"]) if lineage.get("template") else None
    stops = template.stop_strings(tok) if template else [tok.eos_token]
    ids = stop_ids(tok, stops)
    if backend == "transformers":
        from herd.serve.backends import TransformersBackend

        be: Backend = TransformersBackend(folder, tok, ids, max_batch=max_batch, context_length=context_length)
    elif backend == "llamacpp":
        from herd.export import default_gguf_path
        from herd.serve.backends import LlamaCppBackend

        path = Path(gguf) if gguf else default_gguf_path(folder, gguf_dtype)
        if not path.is_file():
            if gguf:
                raise HerdError(f"{path}: no such GGUF file")
            from herd.export import export_gguf

            export_gguf(folder, path, gguf_dtype)
        be = LlamaCppBackend(path, ids, context_length=context_length, threads=threads)
    else:
        raise HerdError(f"unknown backend '{backend}'; choose transformers or llamacpp")
    created = int(folder.joinpath("lineage.json").stat().st_mtime)
    return ServedModel(id=lineage["name"], folder=folder, lineage=lineage, template=template, tokenizer=tok,
                       backend=be, created=created)
