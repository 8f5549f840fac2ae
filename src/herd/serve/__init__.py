"""OpenAI-compatible serving of herd artifacts over transformers or llama.cpp."""

from herd.serve.app import ServerConfig, create_app
from herd.serve.guard import Guard, Verdict
from herd.serve.models import ServedModel, load_served

__all__ = ["Guard", "ServedModel", "ServerConfig", "Verdict", "create_app", "load_served"]
