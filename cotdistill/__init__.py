"""cotdistill: teacher CoT traces -> selective filter -> distilled student -> retention."""

__version__ = "0.1.0"
