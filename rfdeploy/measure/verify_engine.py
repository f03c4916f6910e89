"""A TensorRT engine checked against the searched forward before it is written."""

from __future__ import annotations

from torch import nn

from rfdeploy.backends.base import Runner
from rfdeploy.backends.tensorrt import BuiltEngine, TrtRunner
from rfdeploy.measure.verify import InputSet, Reference, Verification, seeded_inputs, verify_on
from rfdeploy.precision import min_snr_for


def verify_engine(built: BuiltEngine, reference: Reference | nn.Module | Runner, atol: float = 1e-4,
                  rtol: float = 1e-4, seed: int = 0, min_snr_db: float | None = None,
                  inputs: list[InputSet] | None = None) -> Verification:
    """The engine against ``reference`` at each input's ``opt`` shape (the one the engine is tuned for), on
    seeded random inputs or on ``inputs``: an fp32 engine by ``atol``/``rtol``, an fp16 or int8 one by its
    SNR (``min_snr_db``, else the precision's default)."""
    precision = built.sidecar.precision
    sets = inputs or seeded_inputs([profile.opt for profile in built.profiles], seed)
    with TrtRunner(built.engine, f"tensorrt-{precision}") as engine:
        return verify_on(engine, reference, sets, atol, rtol, seed, precision, min_snr_for(precision, min_snr_db))
