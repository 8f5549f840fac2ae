"""Tokenizer metadata for GGUF, built from the artifact's HF tokenizer (never from a guess).

llama.cpp re-implements each tokenizer, so the GGUF must name the exact variant. For byte-level BPE
(SmolLM2, Llama 3, DeepSeek, StarCoder) the pre-tokenizer is identified the way llama.cpp's own
``convert_hf_to_gguf.py`` does it: encode a fixed probe text and look up the sha256 of the ids.
Token types mirror that converter too: added tokens the tokenizer marks special (or that look like
``<|…|>``) are CONTROL, other added tokens (e.g. FIM sentinels a recipe added) USER_DEFINED, so
llama.cpp matches them as whole tokens exactly where transformers does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import HerdError

# llama.cpp's probe text (convert_hf_to_gguf.py, get_vocab_base_pre), byte for byte.
PROBE = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
         '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
         '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
         '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')

# sha256(str(ids of PROBE)) -> llama.cpp pre-tokenizer name, for the byte-level BPE tokenizers of
# Llama-architecture models (subset of llama.cpp's table).
PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Llama 3 finetunes
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM/SmolLM2
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "mpt",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
}

# GGUF token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

FIM_NAMES = {  # GGUF key suffix -> sentinel spellings used by Code Llama, StarCoder/SmolLM2, DeepSeek
    "fim_pre": ("<PRE>", "<fim_prefix>", "<|fim_prefix|>", "<｜fim▁begin｜>"),
    "fim_suf": ("<SUF>", "<fim_suffix>", "<|fim_suffix|>", "<｜fim▁hole｜>"),
    "fim_mid": ("<MID>", "<fim_middle>", "<|fim_middle|>", "<｜fim▁end｜>"),
}


@dataclass
class GGUFVocab:
    """Everything llama.cpp needs to tokenize exactly like the HF tokenizer."""

    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot, fim_pre, ...
    add_bos: bool = False
    add_eos: bool = False

    def write(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.merges:
            writer.add_token_merges(self.merges)
        from gguf import Keys

        for name, idx in self.special_ids.items():
            writer.add_uint32(getattr(Keys.Tokenizer, f"{name.upper()}_ID"), idx)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)


def _looks_special(text: str) -> bool:
    # the converter's heuristic: some models forget to flag their control tokens as special
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>")) \
        or text in ("<pad>", "<mask>")


def pre_tokenizer_name(tokenizer) -> str:
    digest = hashlib.sha256(str(tokenizer.encode(PROBE)).encode()).hexdigest()
    try:
        return PRE_TOKENIZERS[digest]
    except KeyError:
        raise HerdError(f"GGUF export: this byte-level BPE tokenizer's pre-tokenizer is unknown to herd "
                        f"(probe hash {digest[:16]}…); llama.cpp would split text differently from "
                        "transformers. Known: " + ", ".join(sorted(set(PRE_TOKENIZERS.values())))) from None


def build_vocab(tokenizer, folder: str | Path, vocab_size: int, stop_strings: list[str]) -> GGUFVocab:
    """The GGUF tokenizer for an HF tokenizer saved in ``folder`` (tokenizer.json is read for merges)."""
    tj_path = Path(folder) / "tokenizer.json"
    if not tj_path.is_file():
        raise HerdError(f"{folder}: no tokenizer.json; GGUF export needs the fast tokenizer's file")
    tj = json.loads(tj_path.read_text())
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(tj):
        raise HerdError(f"{tj_path}: GGUF export supports byte-level BPE tokenizers (Llama 3, SmolLM2, "
                        f"DeepSeek); this one is {model.get('type')} "
                        f"{'with byte fallback (SentencePiece-style, Llama 1/2)' if model.get('byte_fallback') else ''}"
                        " and is not supported yet")

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise HerdError(f"{folder}: tokenizer has id {max(vocab.values())} but the model's vocab_size is "
                        f"{vocab_size}; resize the embeddings before exporting")
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tok = added[i]
            text = tok.content
            if not tok.normalized:
                text = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))
            tokens.append(text)
            types.append(CONTROL if tok.special or _looks_special(text) else USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(NORMAL)

    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    special: dict[str, int] = {}
    for name in ("bos", "eos", "unk", "pad"):
        idx = getattr(tokenizer, f"{name}_token_id", None)
        if idx is not None:
            special[name] = int(idx)
    # A template stop that is a single token other than EOS (Llama 3's <|eot_id|>) is the
    # end-of-turn token; llama.cpp stops on it as on EOS.
    for stop in stop_strings:
        ids = tokenizer.encode(stop, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != special.get("eos") and ids[0] in added:
            special["eot"] = ids[0]
            break
    for key, spellings in FIM_NAMES.items():
        for s in spellings:
            if s in vocab:
                special[key] = vocab[s]
                break

    probe = tokenizer("a")["input_ids"]
    add_bos = bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id
    add_eos = bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id \
        and len(probe) > 1
    return GGUFVocab(model="gpt2", pre=pre_tokenizer_name(tokenizer), tokens=tokens, token_types=types,
                     merges=merges, special_ids=special, add_bos=add_bos, add_eos=add_eos)


def _is_byte_level(tj: dict) -> bool:
    def has(node) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has(n) for n in node.get("pretokenizers", []) or [])
    return has(tj.get("pre_tokenizer")) or has(tj.get("decoder"))
