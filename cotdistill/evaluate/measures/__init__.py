"""Measures used by the evaluate stage beyond overall accuracy and retention, one concern per
module, each computing plain dicts from evaluation samples (no files, no models) and rendering
its own report section:

- `categories`: accuracy and retention per capability, and the collapsed capabilities;
- `failures`: how each student fails (vs the reference model, no answer, token limit, loops);
- `deployment`: size, weights memory, batch-1 latency and throughput, teacher vs students;
- `plots`: PNG figures for the sections above;
- `samples`: what they read from a scored sample, and grouping helpers.

`cotdistill.evaluate` calls them; they never import a stage.
"""
