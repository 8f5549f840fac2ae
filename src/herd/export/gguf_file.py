"""GGUF export: one file llama.cpp and Ollama run, carrying the artifact's template and lineage.

Neither the ``gguf`` package nor transformers converts an HF Llama to GGUF, so herd writes it with
``gguf.GGUFWriter`` following llama.cpp's converter: HF tensor names mapped to GGUF names, q/k
projections permuted back to llama.cpp's rotary layout, norms kept f32, tied embeddings written once.
Tensors are streamed (header first, then one tensor at a time) so a 7B export needs one tensor of
memory, not the model; the file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from herd.artifacts import locate_artifact, read_lineage
from herd.core.errors import HerdError
from herd.core.hashing import sha256_dir
from herd.core.progress import Progress
from herd.export.vocab import build_vocab

DTYPES = ("f32", "f16", "q8_0")


def _permute(w, n_head: int):
    """Undo HF's rotate-half q/k layout into llama.cpp's interleaved one (convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope(cfg: dict) -> dict:
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _llama3_rope_factors(rope: dict, head_dim: int):
    """Per-frequency factors of Llama 3.1 rope scaling, as llama.cpp's ``rope_freqs`` tensor."""
    import torch

    freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor, lo, hi = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _target_type(name: str, shape: tuple[int, ...], dtype: str):
    from gguf import GGMLQuantizationType as Q

    if len(shape) == 1 or dtype == "f32" or name == "rope_freqs.weight":
        return Q.F32
    if dtype == "q8_0" and shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16


def _encode(arr: np.ndarray, qtype):
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return arr.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr.astype(np.float32), qtype)


def _tensor_plan(folder: Path, cfg: dict):
    """(gguf name, shape, loader) for every tensor, in file order; loaders read one tensor at a time."""
    import gguf
    from safetensors import safe_open

    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise HerdError(f"{folder}: no *.safetensors weights to export")
    plan = []
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                if key.startswith("lm_head.") and cfg.get("tie_word_embeddings", False):
                    continue  # llama.cpp reuses token_embd when output.weight is absent
                if key.endswith("rotary_emb.inv_freq"):
                    continue
                gname = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gname is None:
                    raise HerdError(f"{f}: tensor '{key}' has no GGUF name; is this a plain Llama checkpoint?")
                shape = tuple(st.get_slice(key).get_shape())
                heads = n_head if key.endswith(("q_proj.weight", "q_proj.bias")) else \
                    n_kv if key.endswith(("k_proj.weight", "k_proj.bias")) else None

                def load(f=f, key=key, heads=heads):
                    with safe_open(f, framework="pt") as s:
                        t = s.get_tensor(key).float()
                    if heads is not None:
                        t = _permute(t, heads)
                    return t.numpy()

                plan.append((gname, shape, load))
    rope = _rope(cfg)
    if rope["rope_type"] == "llama3":
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
        factors = _llama3_rope_factors(rope, head_dim)
        plan.append(("rope_freqs.weight", factors.shape, lambda: factors))
    return plan


def _write_hparams(w, cfg: dict) -> None:
    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg["hidden_size"] // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    rope = _rope(cfg)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] not in ("default", "llama3"):
        raise HerdError(f"GGUF export: rope type '{rope['rope_type']}' is not supported (default, linear, llama3)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise HerdError(f"GGUF export: hidden_act '{cfg.get('hidden_act')}' is not Llama's silu")


def _write_lineage(w, lineage: dict, weights_sha256: str) -> None:
    """Provenance in GGUF metadata: general.* keys tools show, herd.* keys for herd tree/info."""
    parent = lineage.get("parent") or {}
    recipe = lineage.get("recipe") or {}
    w.add_name(lineage["name"])
    w.add_type("model")
    if parent.get("name"):
        w.add_base_model_count(1)
        w.add_base_model_name(0, str(parent["name"]))
    w.add_string("herd.version", str((lineage.get("herd") or {}).get("version")))
    w.add_string("herd.lineage_id", str(lineage.get("id")))
    w.add_string("herd.parent", json.dumps(parent, sort_keys=True))
    w.add_string("herd.recipe", json.dumps(recipe or None, sort_keys=True))
    w.add_string("herd.template", str((lineage.get("template") or {}).get("name")))
    w.add_string("herd.source_weights_sha256", weights_sha256)
    w.add_string("herd.lineage", json.dumps(lineage, sort_keys=True, default=str))


def default_gguf_path(artifact: str | Path, dtype: str) -> Path:
    """Where ``herd export`` (and ``herd serve --backend llamacpp``) put an artifact's GGUF."""
    return Path(artifact) / "export" / f"{read_lineage(artifact)['name']}.{dtype}.gguf"


def export_gguf(artifact: str | Path, out: str | Path, dtype: str = "f16", *, progress: bool = True) -> Path:
    """Write ``artifact`` as a GGUF file at ``out``; returns the path (``progress``: tensors written)."""
    import gguf

    from herd.base import load_tokenizer
    from herd.templates import get_template

    if dtype not in DTYPES:
        raise HerdError(f"GGUF dtype '{dtype}' unknown; choose one of {', '.join(DTYPES)}")
    folder, out = locate_artifact(artifact), Path(out)
    lineage = read_lineage(folder)
    weights_sha = sha256_dir(folder)
    if lineage.get("weights_sha256") and lineage["weights_sha256"] != weights_sha:
        raise HerdError(f"{folder}: weights changed since lineage.json was written (sha256 {weights_sha[:12]}… "
                        f"vs recorded {lineage['weights_sha256'][:12]}…); re-run the stage that made it")
    cfg = json.loads((folder / "config.json").read_text())
    tok = load_tokenizer(folder)
    template = get_template(lineage["template"]["name"]) if lineage.get("template") else None
    vocab = build_vocab(tok, folder, cfg["vocab_size"], template.stop_strings(tok) if template else [])
    plan = _tensor_plan(folder, cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), "llama")
    try:
        _write_lineage(w, lineage, weights_sha)
        _write_hparams(w, cfg)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.write(w)
        if template is not None:
            w.add_chat_template(template.plain_jinja(tok))
        qtypes = []
        for name, shape, _ in plan:
            q = _target_type(name, shape, dtype)
            qtypes.append(q)
            if q in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                itemsize = 4 if q == gguf.GGMLQuantizationType.F32 else 2
                w.add_tensor_info(name, shape, np.dtype(np.float32 if itemsize == 4 else np.float16),
                                  int(np.prod(shape)) * itemsize)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, q)
                w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=q)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        with Progress(total=len(plan), desc=f"export gguf {dtype}", unit="tensor", enabled=progress) as bar:
            for (_, _, load), q in zip(plan, qtypes, strict=True):
                w.write_tensor_data(_encode(load(), q))
                bar.update(1)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def read_gguf_lineage(path: str | Path) -> dict | None:
    """The lineage stored in a herd GGUF (None for GGUF files herd did not write)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("herd.lineage")
    return json.loads(field.contents()) if field is not None else None
