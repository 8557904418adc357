"""Configs of the VAE family: ``get_config(arg)`` per file; ``arg`` picks a variant."""
