"""herd: re-derive the Llama family on any Llama-architecture checkpoint.

The Python API mirrors the CLI: :func:`derive`, :func:`chat`, :func:`info`, :func:`bases`
(imported lazily so ``import herd`` stays cheap).
"""

from __future__ import annotations

import logging

# bitsandbytes (the qlora extra; peft imports it whenever it is installed) warns on every import on CPUs
# with AVX512-BF16 that it could not download an optional kernel from the hub; herd never downloads at run
# time, and bitsandbytes falls back to its own kernel
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

__all__ = ["__version__", "bases", "chat", "derive", "info"]


def __getattr__(name: str):
    if name in {"bases", "chat", "derive", "info"}:
        from herd import api

        return getattr(api, name)
    raise AttributeError(name)
