"""The deployments as declared stages: export, optimize, bench."""
