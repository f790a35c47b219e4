"""Smaller models from a teacher: layer-cut students (`student_init`) and quantised checkpoints
(`quantize`)."""
