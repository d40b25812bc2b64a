"""YAML configs shipped with synthface (package data, found through importlib.resources)."""
