"""Number formats a deployment runs in, and how close to the searched fp32 model each must stay.

fp32 is judged like every exact lowering: each output within ``atol + rtol * scale`` of the searched
forward. A lower precision cannot meet 1e-4; it is judged by its signal-to-noise ratio against the
searched fp32 outputs (``10 log10(sum e^2 / sum (a - e)^2)``, the worst output of the worst input set),
with these defaults, settable with ``--min-snr``:

- fp16 (10 mantissa bits, rounding noise about -66 dB per value): 40 dB, a relative RMS error of 1%.
- bf16 (7 mantissa bits, about -48 dB per value; a ResNet-50-sized model accumulates that to 28-38 dB
  with random weights, 41-47 dB with trained ones): 25 dB, 5.6% RMS.
- int8 (calibrated per-channel weights, per-tensor activations): 15 dB, 18% RMS. Random-weight zoo
  models calibrated on random inputs land at 16-25 dB (Res2Net-50, ResNet-50, ConvNeXt-T); a trained
  model on real calibration data does better. RedNet-26 lands at 12.6 dB, its involutions multiplying
  two quantized tensors, and fails until ``--min-snr 15`` keeps its costliest tensors in fp32. What the
  default catches is a broken deployment (a wrong scale, saturation, an overflow: below 10 dB or not
  finite); what a task tolerates is the user's to say with ``--min-snr``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rfdeploy.errors import RFDeployError


@dataclass(frozen=True)
class Precision:
    """One number format a deployment runs in: how it is judged, where an export checks it, what it writes.
    Which backends run it is the backend registry's to say (``Backend.precisions``)."""

    name: str
    min_snr_db: float | None  # the default SNR it must reach (``--min-snr``); None: held to --atol/--rtol
    why: str  # the reason for that default
    verified_on: tuple[str, ...] = ()  # the backends an export checks it on by default (``--verify-backends``)
    artifact: str = ""  # the file an export writes for it beside model.onnx, if any
    calibrated: bool = False  # its model is quantized on calibration data (``--calib``)
    layout_as: str | None = None  # the precision its graph's layout is timed at, where not its own

    @property
    def timed_as(self) -> str:
        return self.layout_as or self.name


FP32 = Precision("fp32", None, "every exact lowering: each output within atol + rtol * scale")
FP16 = Precision("fp16", 40.0, "10 mantissa bits, about -66 dB per value: 40 dB is a relative RMS error of 1%")
BF16 = Precision("bf16", 25.0, "7 mantissa bits, about -48 dB per value, which a ResNet-50-sized model accumulates "
                                "to 28-38 dB: 25 dB is 5.6% RMS", verified_on=("openvino",))
INT8 = Precision("int8", 15.0, "calibrated per-channel weights, per-tensor activations; random-weight zoo models "
                                "land at 16-25 dB: 15 dB (18% RMS) catches a broken deployment",
                 verified_on=("onnxruntime",), artifact="model.int8.onnx", calibrated=True, layout_as="fp32")
FORMATS = {entry.name: entry for entry in (FP32, FP16, BF16, INT8)}
PRECISIONS = tuple(FORMATS)
DEFAULT_MIN_SNR_DB = {name: entry.min_snr_db for name, entry in FORMATS.items() if entry.min_snr_db is not None}
SNR_MARGIN_DB = 3.0  # what a faster variant may cost in SNR, no more: half the signal-to-noise power
# (``measure.timing.decide`` applies it to every choice made by timing)


def precision_of(name: str) -> Precision:
    if name not in FORMATS:
        raise RFDeployError(f"unknown precision '{name}' (known: {', '.join(PRECISIONS)})")
    return FORMATS[name]


def check_precision(precision: str) -> str:
    return precision_of(precision).name


def parse_precisions(text: str) -> list[str]:
    """``"fp32,int8"`` -> ``["fp32", "int8"]``, each checked, duplicates dropped."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise RFDeployError(f"no precision in '{text}' (known: {', '.join(PRECISIONS)})")
    return list(dict.fromkeys(check_precision(name) for name in names))


def min_snr_for(precision: str, given: float | None = None) -> float | None:
    """The SNR a run at ``precision`` must reach: ``given``, else the default; None for fp32 (judged by
    tolerances) unless given."""
    return given if given is not None else precision_of(precision).min_snr_db


@dataclass(frozen=True)
class Int8Activations:
    """How an int8 model stores its activations: the format the backend it is made for runs fastest, or at all.
    Weights are always symmetric per-channel int8. ``conv_outputs``: whether each quantized conv or matmul also
    quantizes its output, not only its inputs."""

    name: str
    why: str
    conv_outputs: bool = False


UINT8_ACTIVATIONS = Int8Activations(
    "uint8", "uint8 with any zero point: onnxruntime's x86 int8 convolutions reach the VNNI kernels with uint8 x int8 "
             "operands (int8 activations ran at 0.93x of fp32 on Res2Net-50, uint8 at 0.33x); each conv's output "
             "quantized too, as its int8 convolution (QLinearConv) writes int8", conv_outputs=True)
ZERO_POINT_FREE_ACTIVATIONS = Int8Activations(
    "zero-point-free", "uint8 for tensors that are never negative, symmetric int8 for the others, every zero point 0 "
                       "(NNCF's scheme): OpenVINO's kernels then skip the zero-point correction (Res2Net-50 3% and "
                       "ConvNeXt-T 4% faster than uint8, within 0.5 dB)")
INT8_ACTIVATIONS = Int8Activations(
    "int8", "symmetric int8, every zero point 0: the only int8 TensorRT builds from QDQ (it refuses uint8 and a "
            "non-zero zero point)")
ACTIVATION_FORMATS = {entry.name: entry for entry in (UINT8_ACTIVATIONS, ZERO_POINT_FREE_ACTIVATIONS,
                                                      INT8_ACTIVATIONS)}
