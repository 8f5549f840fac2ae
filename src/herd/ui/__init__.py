"""``herd ui``: a local web app over a workspace (family tree, artifacts, runs, chat, compare)."""

from herd.ui.app import create_app

__all__ = ["create_app"]
