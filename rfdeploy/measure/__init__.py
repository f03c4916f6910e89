"""Comparison and timing: each artifact against the searched forward, the I/O files, the timing primitives."""
