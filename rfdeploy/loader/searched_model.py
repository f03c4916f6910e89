"""From files to the searched model: a plain architecture, a structure file and a checkpoint.

Names are matched the way they occur in the field: ``module.`` from distributed training is dropped,
and a component prefix (``backbone.``) is found by which prefix makes the most names fit the model.
Entries outside the deployed component are skipped and reported; entries inside it must fit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from rfdeploy.errors import RFDeployError
from rfdeploy.loader.checkpoint import StateDict
from rfdeploy.loader.rates import centred_padding, mmcv_padding
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.loader.structure import MAX_DILATION, Geometry, Structure, load_structure
from rfdeploy.modules import set_submodule

CONVS = (nn.Conv1d, nn.Conv2d)
ALPHA_KEYS = ("branch_weights", "weights", "sample_weights")  # mmcv, research / G2L, RFConv2d
RFCONV_BUFFERS = ("sample_weights", "rates", "num_rates", "counter", "current_search_step")


@dataclass
class LoadInfo:
    """What loading found: formats, prefixes, and everything it skipped or ignored."""

    structure_format: str | None = None
    checkpoint_format: str | None = None
    structure_component: str = ""
    checkpoint_component: str = ""
    searched: list[str] = field(default_factory=list)
    single_branch: list[str] = field(default_factory=list)
    skipped_entries: list[str] = field(default_factory=list)
    ignored_keys: int = 0
    notes: list[str] = field(default_factory=list)
    weights: str = "checkpoint"  # or "random" (a zoo model without --ckpt), "as built", "model" (in-memory ops)
    warnings: list[str] = field(default_factory=list)  # what verification cannot catch (loader/provenance.py)


def best_component(names: list[str], fits) -> tuple[str, int]:
    """The prefix ('' or a first name component) under which the most ``names`` fit, and how many."""
    candidates = [""] + sorted({n.split(".", 1)[0] + "." for n in names if "." in n})
    scored = [(sum(1 for n in names if n.startswith(p) and fits(n[len(p):])), p) for p in candidates]
    count, prefix = max(scored, key=lambda item: (item[0], item[1] == ""))
    return prefix, count


def _strip_module(state: StateDict) -> StateDict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _conv_names(model: nn.Module) -> dict[str, _ConvNd]:
    return {name: m for name, m in model.named_modules() if isinstance(m, CONVS)}


def match_structure(structure: Structure, model: nn.Module, info: LoadInfo) -> dict[str, str]:
    """Model conv name -> structure entry name, for the entries inside the deployed component."""
    modules = dict(model.named_modules())
    names = list(structure.centres)
    prefix, count = best_component(names, lambda n: n in modules)
    if count == 0:
        raise RFDeployError(f"{structure.path}: no entry names a layer of the model "
                            f"(first entry: '{structure.spelling[names[0]]}')")
    matched = {}
    for name in names:
        written = structure.spelling[name]
        if not name.startswith(prefix):
            info.skipped_entries.append(written)
            continue
        local = name[len(prefix):]
        if local not in modules:
            raise RFDeployError(f"{structure.path}: entry '{written}' matches no layer of the model")
        if not isinstance(modules[local], CONVS):
            raise RFDeployError(f"{structure.path}: entry '{written}' names a {type(modules[local]).__name__}, "
                                f"not a Conv1d/Conv2d")
        matched[local] = name
    info.structure_component = prefix
    return matched


def _checkpoint_fits(model_keys: set[str], convs: dict[str, nn.Module]):
    def fits(key: str) -> bool:
        if key.replace(".op_layer.", ".") in model_keys:
            return True
        layer, _, leaf = key.rpartition(".")
        return layer in convs and leaf in ALPHA_KEYS + RFCONV_BUFFERS
    return fits


def _conv_tensors(state: StateDict, name: str, path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    for stem in (f"{name}.op_layer.", f"{name}."):
        if stem + "weight" in state:
            return state[stem + "weight"], state.get(stem + "bias")
    raise RFDeployError(f"{path}: no weight for searched layer '{name}'")


def _searched_conv(conv: _ConvNd, weight: torch.Tensor, bias: torch.Tensor | None, alphas: torch.Tensor,
                   geometry: Geometry, name: str, path: str) -> SearchedConv:
    if tuple(weight.shape) != tuple(conv.weight.shape):
        raise RFDeployError(f"{path}: layer '{name}' has weight shape {list(weight.shape)}, "
                            f"the model expects {list(conv.weight.shape)}")
    if bias is not None and tuple(bias.shape) != (conv.weight.shape[0],):
        raise RFDeployError(f"{path}: layer '{name}' has bias shape {list(bias.shape)}, "
                            f"the model expects [{conv.weight.shape[0]}]")
    if alphas.dim() != 1 or alphas.numel() < len(geometry.rates):
        raise RFDeployError(f"{path}: layer '{name}' has {alphas.numel()} alphas for {len(geometry.rates)} rates")
    _check_values(name, path, weight=weight, bias=bias, alphas=alphas[: len(geometry.rates)])
    return SearchedConv(weight.float(), None if bias is None else bias.float(), alphas.float(), geometry.rates,
                        geometry.paddings, conv.stride, conv.groups, geometry.branch_relu, geometry.always_mix)


def _check_values(name: str, path: str, **tensors: torch.Tensor | None) -> None:
    """A searched layer's weight, bias and live alphas: real floats, finite; weight and alphas not all zero."""
    for role, tensor in tensors.items():
        if tensor is None:
            continue
        if not tensor.is_floating_point():
            raise RFDeployError(f"{path}: layer '{name}' has {role} of dtype {tensor.dtype}, not floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise RFDeployError(f"{path}: layer '{name}' has NaN or infinite values in its {role}")
        if role != "bias" and not bool(tensor.any()):
            raise RFDeployError(f"{path}: layer '{name}' has an all-zero {role}")


def _check_alpha_count(alphas: torch.Tensor, expected: range, name: str, path: str) -> None:
    """The alphas as the op that trained the layer stores them: a vector of ``expected`` length."""
    if alphas.dim() != 1 or alphas.numel() not in expected:
        count = f"{expected.start}" if len(expected) == 1 else f"{expected.start} to {expected.stop - 1}"
        raise RFDeployError(f"{path}: layer '{name}' has alphas of shape {list(alphas.shape)}; "
                            f"its op stores {count}")


def _rfconv_geometry(state: StateDict, name: str, conv: _ConvNd, path: str) -> tuple[Geometry, torch.Tensor]:
    """RFConv2d's live rates; one rate runs ``nn.Conv2d.forward`` with the padding its estimate set."""
    missing = [f"{name}.{leaf}" for leaf in ("sample_weights", "rates", "num_rates") if f"{name}.{leaf}" not in state]
    if missing:
        raise RFDeployError(f"{path}: layer '{name}' is an RFConv2d (it has '{name}.num_rates') but lacks '{missing[0]}'")
    alphas, table, count_tensor = (state[f"{name}.{leaf}"] for leaf in ("sample_weights", "rates", "num_rates"))
    dims = conv.weight.dim() - 2
    if (table.dim() != 2 or table.shape[1] != dims or table.is_floating_point() or table.is_complex()
            or count_tensor.numel() != 1 or count_tensor.is_floating_point() or count_tensor.is_complex()):
        raise RFDeployError(f"{path}: layer '{name}' has malformed RFConv2d buffers (rates {list(table.shape)}, "
                            f"num_rates {list(count_tensor.shape)})")
    _check_alpha_count(alphas, range(table.shape[0], table.shape[0] + 1), name, path)
    count = int(count_tensor.reshape(-1)[0])
    rates = [tuple(int(v) for v in row) for row in table[:count].tolist()]
    if not 1 <= count <= table.shape[0] or not all(1 <= r <= MAX_DILATION for rate in rates for r in rate):
        raise RFDeployError(f"{path}: layer '{name}' has {count} live rates {rates[:4]} out of {table.shape[0]}; "
                            f"want 1 to {table.shape[0]} dilations from 1 to {MAX_DILATION}")
    kernel_size, stride = tuple(conv.kernel_size), tuple(conv.stride)
    if count == 1:
        return Geometry(rates, [mmcv_padding(kernel_size, stride, rates[0])]), state[f"{name}.sample_weights"]
    return Geometry(rates, [centred_padding(kernel_size, r) for r in rates]), state[f"{name}.sample_weights"]


def build_searched(model: nn.Module, structure: Structure | None, state: StateDict | None,
                   checkpoint_path: str = "<checkpoint>") -> tuple[nn.Module, LoadInfo]:
    """The searched model: ``model`` with each searched conv replaced by a ``SearchedConv``."""
    info = LoadInfo(structure_format=structure.format if structure else None)
    searched = copy.deepcopy(model).eval()
    convs = _conv_names(searched)
    entries = match_structure(structure, searched, info) if structure else {}
    local = _localise(searched, convs, state, checkpoint_path, info) if state is not None else None
    replacements: dict[str, SearchedConv] = {}
    for name, conv in convs.items():
        replacement = _replacement(name, conv, entries, structure, local, checkpoint_path, info)
        if replacement is not None:
            replacements[name] = replacement
    if info.single_branch and info.searched:  # a fixed_single_branch checkpoint has no alphas at all
        raise _missing_alphas(info.single_branch[0], checkpoint_path, f"'{info.searched[0]}' has them")
    for name, replacement in replacements.items():
        set_submodule(searched, name, replacement)
    if local is not None:
        _load_remaining(searched, local, set(replacements), checkpoint_path, info)
    return searched, info


def _missing_alphas(name: str, path: str, evidence: str) -> RFDeployError:
    return RFDeployError(f"{path}: layer '{name}' is searched in the structure file, but the checkpoint holds no "
                         f"alphas for it ({evidence}); it would silently become a plain conv")


def _localise(model, convs, state, path, info) -> StateDict:
    """The checkpoint's keys for this model: ``module.`` dropped, component prefix found and removed."""
    state = _strip_module(state)
    model_keys = set(model.state_dict())
    prefix, count = best_component(list(state), _checkpoint_fits(model_keys, convs))
    if count == 0:
        raise RFDeployError(f"{path}: no tensor fits the model (first key: '{next(iter(state))}'); wrong --model?")
    info.checkpoint_component = prefix
    local = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    info.ignored_keys = len(state) - len(local)
    if prefix and info.ignored_keys:
        info.warnings.append(f"{path}: a larger network's checkpoint; {prefix[:-1]} only ({info.ignored_keys} "
                             f"tensors of its other parts ignored); pass --model for the whole network")
    return local


def stored_alphas(rule: str, structure: Structure) -> range:
    """How many alphas each op stores: mmcv ``num_branches`` (the structure's when it is mmcv's own),
    the research op and G2L three (the research op two with ``S`` 2)."""
    if rule == "mmcv":
        branches = structure.expansion.num_branches
        return range(branches, branches + 1) if structure.format == "mmcv" else range(2, 4)
    return range(3, 4) if rule == "g2l" else range(2, 4)


def searched_rule(alpha_key: str, structure: Structure) -> str:
    """The op that trained a layer, from its alpha key: the checkpoint decides, not the structure file."""
    if alpha_key.endswith(".branch_weights"):
        return "mmcv"
    return "g2l" if structure.format == "g2l" else "research"


def _replacement(name: str, conv: _ConvNd, entries: dict[str, str], structure: Structure | None,
                 local: StateDict | None, path: str, info: LoadInfo) -> SearchedConv | None:
    kernel_size, stride = tuple(conv.kernel_size), tuple(conv.stride)
    if local is not None and f"{name}.num_rates" in local:
        geometry, alphas = _rfconv_geometry(local, name, conv, path)
        info.checkpoint_format = "rfconv"
        info.searched.append(name)
        return _searched_conv(conv, *_conv_tensors(local, name, path), alphas, geometry, name, path)
    alpha_key = next((f"{name}.{k}" for k in ALPHA_KEYS if local is not None and f"{name}.{k}" in local), None)
    if alpha_key is not None and local is not None:
        if structure is None or name not in entries:
            where = f"structure {structure.path} has no entry for it" if structure else "no --structure was given"
            raise RFDeployError(f"{path}: layer '{name}' is searched ({alpha_key}) but {where}")
        weight, bias = _conv_tensors(local, name, path)
        alphas = local[alpha_key]
        rule = searched_rule(alpha_key, structure)
        _check_alpha_count(alphas, stored_alphas(rule, structure), name, path)
        branches = alphas.numel() if rule == "mmcv" else None  # mmcv stores num_branches alphas, always
        geometry = structure.searched(entries[name], kernel_size, stride, rule, branches)
        info.checkpoint_format = rule
        info.searched.append(name)
        return _searched_conv(conv, weight, bias, alphas, geometry, name, path)
    if structure is None or name not in entries:
        return None
    if local is None:  # a structure alone: the model's own weights, alphas at their initial (equal) value
        geometry = structure.searched(entries[name], kernel_size, stride)
        info.searched.append(name)
        alphas = torch.full((len(geometry.rates),), structure.init_alpha)
        return _searched_conv(conv, conv.weight, conv.bias, alphas, geometry, name, path)
    if f"{name}.op_layer.weight" in local:
        raise _missing_alphas(name, path, "its conv is a search op's (op_layer)")
    weight, bias = _conv_tensors(local, name, path)
    info.checkpoint_format = "fixed_single_branch"
    info.single_branch.append(name)
    return _searched_conv(conv, weight, bias, torch.ones(1), structure.single(entries[name], kernel_size, stride), name, path)


def _load_remaining(model: nn.Module, local: StateDict, replaced: set[str], path: str, info: LoadInfo) -> None:
    """Every tensor the searched model still expects, from the checkpoint, shapes checked."""
    consumed = {f"{n}.{leaf}" for n in replaced
                for leaf in ("weight", "bias", "op_layer.weight", "op_layer.bias") + ALPHA_KEYS + RFCONV_BUFFERS}
    expected = {k: v for k, v in model.state_dict().items()
                if k.rpartition(".")[0] not in replaced}
    missing = [k for k in expected if k not in local and not k.endswith("num_batches_tracked")]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RFDeployError(f"{path}: lacks '{missing[0]}'{more} that the model needs; wrong --model?")
    for key, tensor in expected.items():
        if key in local and tuple(local[key].shape) != tuple(tensor.shape):
            raise RFDeployError(f"{path}: '{key}' has shape {list(local[key].shape)}, "
                                f"the model expects {list(tensor.shape)}")
        if key in local and local[key].is_floating_point() and not bool(torch.isfinite(local[key]).all()):
            raise RFDeployError(f"{path}: '{key}' holds NaN or infinite values")
    model.load_state_dict({k: local[k] for k in expected if k in local}, strict=False)
    unused = [k for k in local if k not in expected and k not in consumed]
    info.ignored_keys += len(unused)
    if unused:
        info.notes.append(f"{len(unused)} checkpoint tensor(s) fit no layer, e.g. '{unused[0]}'")


def structure_rates(model: nn.Module, structure: str | Path | Structure) -> dict[str, list[tuple[int, ...]]]:
    """The searched branch rates per model conv name, from a structure file alone."""
    structure = structure if isinstance(structure, Structure) else load_structure(structure)
    info = LoadInfo()
    entries = match_structure(structure, model, info)
    convs = _conv_names(model)
    return {name: structure.searched(entry, tuple(convs[name].kernel_size), tuple(convs[name].stride)).rates
            for name, entry in entries.items()}
