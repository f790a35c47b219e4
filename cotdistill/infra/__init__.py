"""Plumbing below every stage: files and manifests, output locks, logs, memory, progress bars,
Slurm arrays."""
