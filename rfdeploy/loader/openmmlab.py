"""An OpenMMLab config (mmdet, mmseg, mmpretrain) as a model source, read as mmengine's runner reads it.

The model is ``cfg.model`` built by the registry of the config's ``default_scope``. The search is the one the
config's ``RFSearchHook`` entry (in ``custom_hooks``) names: its ``rfstructure_file`` and, as mmcv's hook does, the
search settings of its own ``config`` over the file's. A config without that hook is a plain model, and the
source says so. The default input shape is the test pipeline's: its ``Resize`` scale (or ``CenterCrop`` size),
padded to the data preprocessor's ``pad_size_divisor``.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.optional import prints_to_stderr

SEARCH_HOOK = "RFSearchHook"
# default_scope -> the package that registers it, as pip names it
SCOPES = {"mmdet": "mmdet", "mmseg": "mmsegmentation", "mmpretrain": "mmpretrain"}


@dataclass(frozen=True)
class ConfigFile:
    """``--config``: an OpenMMLab config file (Python, JSON or YAML, as mmengine reads them)."""

    path: Path


@dataclass(frozen=True)
class ConfigModel:
    module: Any  # nn.Module, built by the scope's registry
    scope: str
    structure: dict | None  # the hook's structure, its search settings merged in; None: no search
    structure_path: str | None
    input_shape: tuple[int, ...] | None
    notes: tuple[str, ...]
    config: Any  # the mmengine Config it came from


def read_config(path: Path):
    """The config as mmengine reads it: a config file is Python that runs, like ``--model file.py:callable``."""
    if not path.is_file():
        raise RFDeployError(f"config {path}: no such file")
    try:
        from mmengine.config import Config
    except ImportError:
        raise RFDeployError("--config needs mmengine: pip install mmengine") from None
    try:
        return Config.fromfile(str(path))
    except Exception as error:  # noqa: BLE001  # the config's own code, or its syntax
        raise RFDeployError(f"config {path} cannot be read: {type(error).__name__}: {first_line(error)}") from None


def build_from_config(path: Path) -> ConfigModel:
    with prints_to_stderr():  # mmengine's logger writes to stdout
        return _build_from_config(path)


def _build_from_config(path: Path) -> ConfigModel:
    cfg = read_config(path)
    scope = cfg.get("default_scope")
    if scope not in SCOPES:
        raise RFDeployError(f"config {path}: default_scope is {scope!r}; rfdeploy builds models of "
                            f"{', '.join(SCOPES)}")
    if "model" not in cfg:
        raise RFDeployError(f"config {path}: it has no 'model'")
    module = _build(path, scope, cfg.model)
    hook = search_hook(cfg)
    notes = []
    structure, structure_path = None, None
    if hook is None:
        notes.append(f"config {path.name} has no {SEARCH_HOOK} in custom_hooks: a plain model")
    else:
        structure_path = hook.get("rfstructure_file")
        structure = _hook_structure(path, hook)
        notes.append(f"search from config {path.name}: {SEARCH_HOOK} mode {hook.get('mode', 'search')}, "
                     f"structure {structure_path}")
    return ConfigModel(module, scope, structure, structure_path, test_input_shape(cfg), tuple(notes), cfg)


def _build(path: Path, scope: str, model_cfg) -> Any:
    try:
        registry = importlib.import_module(f"{scope}.registry")
        importlib.import_module(f"{scope}.utils").register_all_modules(init_default_scope=False)
    except ImportError as error:
        raise RFDeployError(f"config {path}: default_scope {scope} needs {SCOPES[scope]}, which does not import "
                            f"({first_line(error)}): pip install {SCOPES[scope]}") from None
    from mmengine.registry import DefaultScope

    try:
        with DefaultScope.overwrite_default_scope(scope):
            return registry.MODELS.build(model_cfg.copy()).eval()
    except Exception as error:  # noqa: BLE001  # the registry's and the model's own errors
        raise RFDeployError(f"config {path}: cfg.model does not build: {type(error).__name__}: "
                            f"{first_line(error)}") from None


def search_hook(cfg) -> dict | None:
    hooks = [hook for hook in cfg.get("custom_hooks", None) or [] if str(hook.get("type", "")).split(".")[-1]
             == SEARCH_HOOK]
    return dict(hooks[0]) if hooks else None


def _hook_structure(path: Path, hook: dict) -> dict:
    """The structure file the hook names, with the hook's own search settings over the file's (mmcv's hook takes
    only the ``structure`` from the file)."""
    named = hook.get("rfstructure_file")
    if not named:
        raise RFDeployError(f"config {path}: its {SEARCH_HOOK} names no rfstructure_file; give --structure")
    file = Path(named)
    if not file.is_file():
        raise RFDeployError(f"config {path}: its {SEARCH_HOOK}'s rfstructure_file {named} does not exist "
                            f"(relative to the working folder, as mmengine opens it); give --structure")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise RFDeployError(f"{file}: not a readable structure file ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise RFDeployError(f"{file}: not a structure file (a JSON object)")
    settings = (hook.get("config") or {}).get("search")
    return {**data, "search": {**(data.get("search") or {}), **dict(settings)}} if settings else data


def test_input_shape(cfg) -> tuple[int, ...] | None:
    """``(1, 3, H, W)`` of the test pipeline's resize (or crop), padded as the data preprocessor pads."""
    size = _pipeline_size(_test_pipeline(cfg))
    if size is None:
        return None
    divisor = int((cfg.model.get("data_preprocessor") or {}).get("pad_size_divisor", 1) or 1)
    height, width = (math.ceil(side / divisor) * divisor for side in size)
    return (1, 3, height, width)


def _test_pipeline(cfg) -> list:
    dataloader = cfg.get("test_dataloader") or {}
    pipeline = (dataloader.get("dataset") or {}).get("pipeline")
    return list(pipeline or cfg.get("test_pipeline") or [])


def _pipeline_size(pipeline: list) -> tuple[int, int] | None:
    """``(H, W)``: mmcv's ``scale`` is ``(W, H)``; a crop's ``crop_size`` is ``(W, H)`` or one side."""
    for step in reversed(pipeline):
        kind = str(step.get("type", "")).split(".")[-1]
        if kind == "CenterCrop" and step.get("crop_size"):
            return _height_width(step["crop_size"])
        if kind in ("Resize", "FixScaleResize") and step.get("scale"):
            return _height_width(step["scale"])
    return None


def _height_width(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    width, height = size
    return int(height), int(width)
