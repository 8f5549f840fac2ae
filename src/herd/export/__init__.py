"""Exports of an artifact: GGUF (+ Ollama Modelfile) for llama.cpp/Ollama, a portable HF folder for vLLM."""

from herd.export.gguf_file import default_gguf_path, export_gguf, read_gguf_lineage
from herd.export.hf import export_hf
from herd.export.ollama import write_modelfile

__all__ = ["default_gguf_path", "export_gguf", "export_hf", "read_gguf_lineage", "write_modelfile"]
