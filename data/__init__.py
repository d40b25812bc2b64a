"""Small data shipped with synthface: the demo models (package data, see README.md here)."""
