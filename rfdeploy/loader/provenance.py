"""What verification cannot see: where the weights came from, and whether the files belong together.

Verification compares the compiled model with the searched model built from the same files, so it passes
for random weights, for a backbone cut out of a detector and for a stale structure file alike. These
checks say so, as warnings recorded in ``LoadInfo`` (the report's ``load`` section).
"""

from __future__ import annotations

from rfdeploy.loader.checkpoint import TrainingProgress
from rfdeploy.loader.searched_model import LoadInfo
from rfdeploy.loader.structure import Structure

RANDOM, CHECKPOINT, AS_BUILT = "random", "checkpoint", "as built"


def weights_origin(model: object, checkpoint_given: bool) -> str:
    """``checkpoint``; ``random`` for a zoo model without one; ``as built`` for the user's own model."""
    if checkpoint_given:
        return CHECKPOINT
    return RANDOM if isinstance(model, str) and ":" not in model else AS_BUILT


def stale_structure(structure: Structure | None, progress: TrainingProgress, checkpoint: str) -> str | None:
    """A warning when the search wrote a newer structure file before the checkpoint was saved.

    mmcv's ``RFSearchHook`` steps once per epoch by default and records the step in the file's
    ``search.step``; mmengine records completed epochs in the checkpoint. A checkpoint saved at or after
    the step of the next file has alphas for that file's rates, not for these.
    """
    if structure is None or structure.search_step is None or progress.epoch is None:
        return None
    following = structure.search_step.next_written()
    if following is None or progress.epoch < following:
        return None
    return (f"{structure.path} was written at search step {structure.search_step.step}, but {checkpoint} was "
            f"saved after epoch {progress.epoch}, past step {following}, which wrote newer rates: the rates come "
            f"from the structure file, and a stale one still passes verification")


def note_provenance(info: LoadInfo, weights: str, structure: Structure | None, progress: TrainingProgress,
                    checkpoint: str, involutions: int = 0) -> None:
    """Warnings and notes on where the weights came from; ``involutions``: how many the model holds (they are
    lowered whether or not anything was searched)."""
    info.weights = weights
    if weights == RANDOM:
        info.warnings.append("no --ckpt: the weights are random, so verification proves the lowering, "
                             "not a trained model")
    elif weights == AS_BUILT:
        info.warnings.append("no --ckpt: the weights are the model's own as built; verification proves the "
                             "lowering, not a trained model")
    if not info.searched and not info.single_branch and involutions:
        info.notes.append(f"0 searched layers: {involutions} involution(s) are lowered instead")
    elif not info.searched and not info.single_branch:
        info.warnings.append("0 searched layers: nothing was lowered (give --structure, or a checkpoint with "
                             "alphas)")
    if info.single_branch and not info.searched:
        info.warnings.append(f"{checkpoint}: no alphas for the {len(info.single_branch)} layer(s) the structure "
                             f"file names, so it was read as a fixed_single_branch checkpoint: plain convs at the "
                             f"structure's dilations, not searched layers (the network before search would read "
                             f"the same)")
    stale = stale_structure(structure, progress, checkpoint)
    if stale:
        info.warnings.append(stale)
