"""cotdistill: teacher chain-of-thought traces -> selective filter -> distilled student -> retention."""

__version__ = "0.1.0"
