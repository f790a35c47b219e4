"""Refinement rounds inside `cotdistill run`: a validation split, the weak problems sampled
again, a report."""
