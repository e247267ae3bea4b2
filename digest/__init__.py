"""papers-digest: Hugging Face Daily Papers, filtered per subscriber, by email."""

__version__ = "0.1.0"
