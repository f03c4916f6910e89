"""Structure files: which convs were searched, around which centre dilation, with which search space.

Three formats (shared/FORMATS.md): mmcv >= 2 (``search.num_branches``), the older research format
(``search.S``) and G2L (``global`` / ``model``). Names lose the ``module.`` that distributed training
adds; where a file holds a layer under both spellings, the unprefixed (live) entry wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rfdeploy.errors import RFDeployError
from rfdeploy.loader import rates as R

Centre = tuple[int, ...]


@dataclass(frozen=True)
class Geometry:
    """What one searched conv computes: its branches' rates and paddings, and how they mix."""

    rates: list[R.Rate]
    paddings: list[R.Rate]
    branch_relu: bool = False
    always_mix: bool = False


@dataclass(frozen=True)
class Structure:
    path: str
    format: str  # "mmcv" | "research" | "g2l"
    expansion: R.Expansion
    centres: dict[str, Centre]
    init_alpha: float
    spelling: dict[str, str]  # name without `module.` -> the key as the file writes it
    stale_entries: int = 0  # `module.` entries shadowed by a live unprefixed one

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
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise RFDeployError(f"{path}: entry '{name}' must be a dilation >= 1 or a list of them, got {value!r}")
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


def _number(config: dict, key: str, path: Path, default=None):
    value = config.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RFDeployError(f"{path}: search setting '{key}' is missing or not a number")
    return value


def load_structure(path: str | Path) -> Structure:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RFDeployError(f"{path}: no such structure file") from None
    except json.JSONDecodeError as error:
        raise RFDeployError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RFDeployError(f"{path}: unreadable ({error})") from None
    if not isinstance(data, dict):
        raise RFDeployError(f"{path}: not a structure file (expected a JSON object)")
    if isinstance(data.get("global"), dict) and isinstance(data.get("model"), dict):
        fmt, config, entries, branches = "g2l", data["global"], data["model"], 3
    elif isinstance(data.get("search"), dict) and isinstance(data.get("structure"), dict):
        config, entries = data["search"], data["structure"]
        if "num_branches" in config:
            fmt, branches = "mmcv", config["num_branches"]
        elif "S" in config:
            fmt, branches = "research", config["S"]
        else:
            raise RFDeployError(f"{path}: 'search' has neither 'num_branches' (mmcv) nor 'S' (research format)")
    else:
        raise RFDeployError(f"{path}: not a structure file (expected 'search' + 'structure', or 'global' + 'model')")
    if branches not in (2, 3):
        raise RFDeployError(f"{path}: {branches} branches; RF-Next searches with 2 or 3")
    expansion = R.Expansion(float(_number(config, "exp_rate", path)), int(_number(config, "mmin", path, 1)),
                            int(_number(config, "mmax", path, 10**9)), int(branches))
    centres, spelling, stale = _live_names(entries, path)
    if not centres:
        raise RFDeployError(f"{path}: names no layers")
    init_alpha = float(config.get("init_alphas", 0.01) or 0.01)
    return Structure(str(path), fmt, expansion, centres, init_alpha, spelling, stale)
