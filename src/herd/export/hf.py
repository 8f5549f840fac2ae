"""``--to hf``: a self-contained HF folder that vLLM, TGI and transformers load with herd uninstalled.

An artifact's weights are already merged (a LoRA adapter, if any, sits in ``adapter/`` beside them), so
the export copies them (optionally cast), and makes the folder portable: the chat template is the plain
jinja (no ``{% generation %}`` tags, which only transformers understands), ``generation_config.json``
stops on every template stop token (vLLM and ``generate()`` read it), and the model card and lineage
travel along.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from herd.core.errors import HerdError
from herd.core.progress import Progress, phase

HF_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def export_hf(artifact: str | Path, out: str | Path, dtype: str | None = None, *, progress: bool = True) -> Path:
    """Write ``artifact`` as a portable HF folder at ``out``; ``progress`` reports weight files copied
    (or the cast to ``dtype``, one load-and-save, as a timed phase)."""
    import torch

    from herd.artifacts import locate_artifact, model_card, publish, read_lineage, staging_dir
    from herd.base import load_model, load_tokenizer
    from herd.templates import get_template

    folder, out = locate_artifact(artifact), Path(out)
    if dtype is not None and dtype not in HF_DTYPES:
        raise HerdError(f"--dtype {dtype} is not an HF dtype; choose one of {', '.join(HF_DTYPES)}")
    lineage = read_lineage(folder)
    tmp = staging_dir(out)
    tok = load_tokenizer(folder)
    if dtype is None:
        for f in Progress(sorted(folder.glob("*.safetensors")), desc="export hf", unit="file", enabled=progress):
            shutil.copy2(f, tmp / f.name)
        for name in ("config.json", "model.safetensors.index.json"):
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
    else:
        with phase("export hf", f"weights cast to {dtype}", enabled=progress):
            model = load_model(folder, dtype=getattr(torch, HF_DTYPES[dtype]))
            model.config.architectures = ["LlamaForCausalLM"]
            model.save_pretrained(tmp, safe_serialization=True)
    template = get_template(lineage["template"]["name"]) if lineage.get("template") else None
    if template is not None:
        tok.chat_template = template.plain_jinja(tok)
    tok.save_pretrained(tmp)

    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id", tok.eos_token_id)
    eos = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    for stop in template.stop_strings(tok) if template else []:
        ids = tok.encode(stop, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in eos:
            eos.append(ids[0])
    gen.update({"eos_token_id": eos[0] if len(eos) == 1 else eos, "bos_token_id": tok.bos_token_id,
                "pad_token_id": tok.pad_token_id})
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str) + "\n")
    card = folder / "README.md"
    (tmp / "README.md").write_text(card.read_text() if card.is_file() else model_card(lineage))
    return publish(tmp, out)
