"""Files or in-memory models -> the searched model: checkpoints, structure files, rates, recognition."""
