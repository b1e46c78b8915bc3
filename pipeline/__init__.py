"""Dataset curation: sources, decoding, the dataset directory, stages."""

__version__ = "0.2.0"
