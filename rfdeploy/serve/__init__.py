"""Serving: model repositories for inference servers."""
