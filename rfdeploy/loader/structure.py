"""Structure files: which convs were searched, around which centre dilation, with which search space.

Three formats (docs/formats.md): mmcv >= 2 (``search.num_branches``), the older research format
(``search.S``) and G2L (``global`` / ``model``). Names lose the ``module.`` that distributed training
adds; where a file holds a layer under both spellings, the unprefixed (live) entry wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rfdeploy.errors import RFDeployError
from rfdeploy.loader import rates as R
from rfdeploy.loader.input_file import looks_like, regular_file

Centre = tuple[int, ...]


@dataclass(frozen=True)
class Geometry:
    """What one searched conv computes: its branches' rates and paddings, and how they mix."""

    rates: list[R.Rate]
    paddings: list[R.Rate]
    branch_relu: bool = False
    always_mix: bool = False


@dataclass(frozen=True)
class SearchStep:
    """When mmcv's ``RFSearchHook`` wrote the file: it writes one at every ``interval``-th step below
    ``max_step``, one step per training epoch (or iteration)."""

    step: int
    interval: int
    max_step: int

    def next_written(self) -> int | None:
        """The step at which the search wrote the next structure file, if it wrote one."""
        following = self.step + self.interval
        return following if following < self.max_step else None


@dataclass(frozen=True)
class Structure:
    path: str
    format: str  # "mmcv" | "research" | "g2l"
    expansion: R.Expansion
    centres: dict[str, Centre]
    init_alpha: float
    spelling: dict[str, str]  # name without `module.` -> the key as the file writes it
    stale_entries: int = 0  # `module.` entries shadowed by a live unprefixed one
    search_step: SearchStep | None = None

    def searched(self, name: str, kernel_size: R.Rate, stride: R.Rate, rule: str | None = None,
                 num_branches: int | None = None) -> Geometry:
        """The branches of the searched conv ``name`` (a multi-branch checkpoint).

        ``rule`` is the op that trained it ("mmcv", "research", "g2l"; default: this file's format). The
        checkpoint decides: a published research-format file retrained with mmcv's RFSearchHook gives an
        mmcv op (``branch_weights``), with mmcv's rates and paddings.
        """
        rule = rule or self.format
        expansion = self.expansion if num_branches is None else replace(self.expansion, num_branches=num_branches)
        centre = self._centre(name, len(kernel_size), rule)
        if rule == "mmcv":
            rates = R.mmcv_rates(centre, kernel_size, expansion)
            return Geometry(rates, [R.mmcv_padding(kernel_size, stride, r) for r in rates])
        dims = len(kernel_size)
        if rule == "research":
            scalar = R.research_rates(centre[0], expansion.num_branches, expansion)
            return Geometry([(r,) * dims for r in scalar], [R.research_padding(kernel_size, r) for r in scalar],
                            always_mix=True)
        scalar = R.g2l_rates(centre[0], expansion)
        return Geometry([(r,) * dims for r in scalar], [(r,) * dims for r in scalar], branch_relu=True,
                        always_mix=True)

    def single(self, name: str, kernel_size: R.Rate, stride: R.Rate) -> Geometry:
        """The one dilation of a conv retrained with its searched rate (``fixed_single_branch``).

        Retraining is mmcv's ``set_model`` (padding ``get_single_padding``) for either image format;
        G2L pads by the dilation.
        """
        centre = self._centre(name, len(kernel_size), "mmcv" if self.format != "g2l" else "g2l")
        if self.format == "g2l":
            return Geometry([centre], [centre])
        return Geometry([centre], [R.mmcv_padding(kernel_size, stride, centre)])

    def _centre(self, name: str, dims: int, rule: str) -> Centre:
        centre = self.centres[name]
        if len(centre) == 1:
            return centre * dims
        if len(centre) != dims:
            raise RFDeployError(f"{self.path}: entry '{name}' has {len(centre)} dilations for a {dims}-D conv")
        if rule != "mmcv" and len(set(centre)) > 1:
            raise RFDeployError(f"{self.path}: entry '{name}' has unequal dilations {list(centre)}, "
                                f"but the {rule} op searches one rate for both dims")
        return centre


def _centre_of(value, path: Path, name: str) -> Centre:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DILATION
                             for v in values):
        raise RFDeployError(f"{path}: entry '{name}' must be a dilation from 1 to {MAX_DILATION} or a list of them, "
                            f"got {str(value)[:80]}")
    return tuple(values)


def _live_names(entries: dict, path: Path) -> tuple[dict[str, Centre], dict[str, str], int]:
    live: dict[str, Centre] = {}
    spelling: dict[str, str] = {}
    stale = 0
    unprefixed_first = sorted(entries, key=lambda name: name.startswith("module."))  # those are the live ones
    for name in unprefixed_first:
        bare = name.removeprefix("module.")
        if bare in live:
            stale += 1
            continue
        live[bare] = _centre_of(entries[name], path, name)
        spelling[bare] = name
    return live, spelling, stale


def _setting(config: dict, key: str, path: Path, default: float | None, low: float, high: float,
             integer: bool = False) -> float:
    """A search setting: a finite number in ``[low, high]`` (an integer where ``integer``)."""
    value = config.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high
            or (integer and value != int(value))):
        kind = "an integer" if integer else "a number"
        raise RFDeployError(f"{path}: search setting '{key}' must be {kind} from {low} to {high}, "
                            f"got {str(value)[:40]}")
    return int(value) if integer else float(value)


MAX_DILATION = 2**16  # far beyond any input; keeps rates, paddings and merged kernels of a sane size


def _expansion(config: dict, branches_key: str | None, path: Path) -> tuple[R.Expansion, float]:
    """The search space and the initial alpha, every setting checked in one place. ``branches_key`` names
    the branch count (G2L has none: always three)."""
    branches = config[branches_key] if branches_key else 3
    if branches not in (2, 3) or isinstance(branches, bool):
        raise RFDeployError(f"{path}: search setting '{branches_key}' is {str(branches)[:40]}; "
                            f"RF-Next searches with 2 or 3 branches")
    exp_rate = _setting(config, "exp_rate", path, None, low=1e-6, high=1.0)
    mmin = _setting(config, "mmin", path, 1, low=1, high=MAX_DILATION, integer=True)
    mmax = _setting(config, "mmax", path, MAX_DILATION, low=mmin, high=10**9, integer=True)
    init_alpha = _setting(config, "init_alphas", path, 0.01, low=-1e6, high=1e6)
    if init_alpha == 0:
        raise RFDeployError(f"{path}: search setting 'init_alphas' is 0: every alpha would be zero")
    return R.Expansion(exp_rate, int(mmin), int(min(mmax, MAX_DILATION)), int(branches)), init_alpha


def load_structure(path: str | Path) -> Structure:
    path = regular_file(path, "structure file")
    if looks_like(path) == "checkpoint":
        raise RFDeployError(f"{path}: not a structure file, it looks like a checkpoint; give it to --ckpt and the "
                            f"structure JSON to --structure")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RFDeployError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    except (OSError, ValueError, RecursionError) as error:  # ValueError: an integer of thousands of digits
        raise RFDeployError(f"{path}: unreadable ({str(error)[:200]})") from None
    return parse_structure(data, path)


def parse_structure(data, path: str | Path = "<structure dict>") -> Structure:
    """A structure from its JSON data (a file's, or a dict the caller holds); ``path`` names it in errors."""
    path = Path(path)
    if not isinstance(data, dict):
        raise RFDeployError(f"{path}: not a structure file (expected a JSON object)")
    branches_key: str | None
    if isinstance(data.get("global"), dict) and isinstance(data.get("model"), dict):
        fmt, config, entries, branches_key = "g2l", data["global"], data["model"], None
    elif isinstance(data.get("search"), dict) and isinstance(data.get("structure"), dict):
        config, entries = data["search"], data["structure"]
        if "num_branches" in config:
            fmt, branches_key = "mmcv", "num_branches"
        elif "S" in config:
            fmt, branches_key = "research", "S"
        else:
            raise RFDeployError(f"{path}: 'search' has neither 'num_branches' (mmcv) nor 'S' (research format)")
    else:
        raise RFDeployError(f"{path}: not a structure file (expected 'search' + 'structure', or 'global' + 'model')")
    expansion, init_alpha = _expansion(config, branches_key, path)
    centres, spelling, stale = _live_names(entries, path)
    if not centres:
        raise RFDeployError(f"{path}: names no layers")
    return Structure(str(path), fmt, expansion, centres, init_alpha, spelling, stale, _search_step(config))


def _search_step(config: dict) -> SearchStep | None:
    step, interval, max_step = (config.get(key) for key in ("step", "search_interval", "max_step"))
    if (isinstance(step, int) and isinstance(interval, int) and isinstance(max_step, int) and interval >= 1
            and not any(isinstance(v, bool) for v in (step, interval, max_step))):
        return SearchStep(step, interval, max_step)
    return None
