"""On-disk data formats shared across the project (verification .bin, RecordIO, ...)."""
