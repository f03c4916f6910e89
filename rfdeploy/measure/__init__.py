"""Proof and speed: verification against the searched forward, timing, bench, tune."""
