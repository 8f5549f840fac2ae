"""Content hashes for lineage, memoised by (path, size, mtime) so big weights are read once."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from herd.core.paths import cache_dir

_MEMO_FILE = "sha256-memo.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_json(obj) -> str:
    return sha256_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))


def sha256_file(path: str | Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir() / _MEMO_FILE
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    memo[key] = digest
    tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")  # per process: torchrun ranks hash the same files
    tmp.write_text(json.dumps(memo))
    tmp.replace(memo_path)
    return digest


def sha256_dir(path: str | Path, patterns: tuple[str, ...] = ("*.safetensors",)) -> str:
    """One hash over the named files of a folder (sorted by name): the weights of an HF checkpoint."""
    path = Path(path)
    files = sorted(f for pat in patterns for f in path.glob(pat))
    return sha256_json({f.name: sha256_file(f) for f in files})
