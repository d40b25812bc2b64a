"""Data side of synthface: shard format, manifests, configs, QC, reports, the procedural face world.

`pipeline` is the bottom layer: it imports no other synthface package, so every
other stage can depend on it.
"""

__version__ = "0.1.0"
