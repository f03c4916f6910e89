"""Where a model comes from, one ``Source`` each: a registry, so that a new input form is one entry.

A source ``matches`` what the user gave (``--model``'s text, a module object, a path) and ``load``s the plain
architecture the search started from, with its name and default input shape. The forms, first match wins:
an ``nn.Module`` in memory, an OpenMMLab config (``--config``, ``loader.openmmlab``: it names its search too), an
ONNX file (a graph: ``rfdeploy optimize`` lowers it), ``path/to/file.py:callable``,
``package.module:callable``, and a zoo name. A model that already holds its search ops (mmcv's
``RFSearchHook.init_model``, ``RFConv2d``, G2L) is read in place by ``load``, whatever its source.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pdb  # noqa: T100  # not to debug: its set_trace is swapped for an error while user code runs
import sys
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from rfdeploy import models
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader import recognise
from rfdeploy.loader.checkpoint import (
    StateDict,
    TrainingProgress,
    progress_of,
    read_checkpoint,
    state_dict_of,
)
from rfdeploy.loader.in_memory import adopt_search_ops, search_ops
from rfdeploy.loader.involution import involution_layers
from rfdeploy.loader.openmmlab import ConfigFile, build_from_config
from rfdeploy.loader.provenance import note_provenance, weights_origin
from rfdeploy.loader.searched_model import LoadInfo, build_searched
from rfdeploy.loader.structure import Structure, load_structure, parse_structure

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Architecture:
    """The plain architecture a source gives: the module, its name, its default input shape; and where the source
    names a search (an OpenMMLab config's ``RFSearchHook``), its structure and where it came from."""

    module: nn.Module
    name: str
    input_shape: Shape | None
    structure: dict | None = None
    structure_name: str | None = None
    notes: tuple[str, ...] = ()
    config: object = None  # an OpenMMLab config's mmengine Config


@dataclass(frozen=True)
class Source:
    name: str
    form: str  # how a user writes it, for help and errors
    matches: Callable[[object], bool]
    load: Callable[[object], Architecture]


def _is_spec(given: object) -> bool:
    return isinstance(given, str) and ":" in given


def _in_memory(given: object) -> Architecture:
    assert isinstance(given, nn.Module)
    return Architecture(given.eval(), type(given).__name__, getattr(given, "default_input_shape", None))


def _onnx_graph(given: object) -> Architecture:
    raise RFDeployError(f"model '{given}' is an ONNX graph: 'rfdeploy optimize {given}' lowers the searched convs "
                        f"in it; --model takes the PyTorch architecture")


def _from_file(given: object) -> Architecture:
    spec = str(given)
    source, _, attribute = spec.rpartition(":")
    path = Path(source)
    if not path.is_file():
        raise RFDeployError(f"model '{spec}': no such file {path}")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or module_spec.loader is None:
        raise RFDeployError(f"model '{spec}': cannot import {path}")

    def imported():
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module

    return _built(spec, attribute, imported)


def _from_module(given: object) -> Architecture:
    spec = str(given)
    source, _, attribute = spec.rpartition(":")
    if not all(part.isidentifier() for part in source.split(".")):
        raise RFDeployError(f"model '{spec}': '{source}' is neither a module name nor a .py file; want {MODEL_FORMS}")

    def imported():
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        return importlib.import_module(source)

    return _built(spec, attribute, imported)


def _built(spec: str, attribute: str, imported: Callable[[], object]) -> Architecture:
    """What ``attribute`` of the imported module builds (or is), the user's code run under guard."""
    if not attribute.isidentifier():
        raise RFDeployError(f"model '{spec}': '{attribute}' is not a callable's name; want {MODEL_FORMS}")
    factory = _run_user_code(spec, "cannot be imported", lambda: getattr(imported(), attribute))
    build = factory if callable(factory) and not isinstance(factory, nn.Module) else lambda: factory
    model = _run_user_code(spec, "failed to build", build)
    if not isinstance(model, nn.Module):
        raise RFDeployError(f"model '{spec}' returned {type(model).__name__}, not a torch nn.Module")
    return Architecture(model.eval(), spec, getattr(model, "default_input_shape", None))


def _from_config(given: object) -> Architecture:
    assert isinstance(given, ConfigFile)
    built = build_from_config(given.path)
    return Architecture(built.module, given.path.stem, built.input_shape, built.structure, built.structure_path,
                        built.notes, built.config)


def _from_zoo(given: object) -> Architecture:
    name = str(given)
    entry = models.get(name)
    return Architecture(models.build(name), name, entry.input_shape)


SOURCES = (
    Source("module", "an nn.Module (Python API)", lambda given: isinstance(given, nn.Module), _in_memory),
    Source("config", "an OpenMMLab config (--config)", lambda given: isinstance(given, ConfigFile), _from_config),
    Source("onnx", "an ONNX file (rfdeploy optimize)",
           lambda given: isinstance(given, (str, Path)) and str(given).lower().endswith(".onnx"), _onnx_graph),
    Source("file", "path/to/file.py:callable", lambda given: _is_spec(given) and str(given).rpartition(":")[0]
           .endswith(".py"), _from_file),
    Source("callable", "package.module:callable", _is_spec, _from_module),
    Source("zoo", "a zoo name (rfdeploy models)", lambda given: isinstance(given, str), _from_zoo),
)
MODEL_FORMS = ", ".join(source.form for source in SOURCES if source.name in ("file", "callable", "zoo"))


def source_of(given: object) -> Source:
    for source in SOURCES:
        if source.matches(given):
            return source
    raise RFDeployError(f"model must be {MODEL_FORMS} or an nn.Module, not {given!r}")


def model_source(model: object, config: str | Path | None) -> object:
    """What ``--model`` or ``--config`` names (one of them, or neither: recognised from the checkpoint)."""
    if config is None:
        return model
    if model is not None:
        raise RFDeployError("--model and --config both name the model: give one")
    return ConfigFile(Path(config))


def structure_of(plain: Architecture, structure: str | Path | Mapping | None) -> Structure | None:
    """The structure given, else the one the source names."""
    return _structure(structure if structure is not None else plain.structure, plain.structure_name)


def architecture(given: object) -> Architecture:
    """The plain architecture ``given`` names, by the first source that matches it."""
    return source_of(given).load(given)


# What the user's code may call that would stop or take over this process: each is swapped for an error
# while that code runs (a C extension's own abort() is beyond any Python guard).
_TRAPS = ((sys, "breakpointhook", "breakpoint()"), (os, "abort", "os.abort()"),
          (pdb, "set_trace", "pdb.set_trace()"), (pdb.Pdb, "set_trace", "pdb.set_trace()"))


def _refusal(call: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"it called {call}")

    return refuse


@contextmanager
def _trapped():
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _TRAPS]
    for owner, name, call in _TRAPS:
        setattr(owner, name, _refusal(call))
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _run_user_code(spec: str, step: str, function):
    """``function()``, the user's own code: whatever it raises, exits, aborts or breaks into becomes one line."""
    try:
        with _trapped():
            return function()
    except RFDeployError:
        raise
    except SystemExit as exit_:
        raise RFDeployError(f"model '{spec}' {step}: it called exit({exit_.code!r})") from None
    except Exception as error:  # noqa: BLE001  # the user's own code: report it in one line
        raise RFDeployError(f"model '{spec}' {step}: {type(error).__name__}: {first_line(error)}") from None


@dataclass
class Loaded:
    """A searched model ready to compile: the model, where it came from, and its default input shape."""

    searched: nn.Module
    info: LoadInfo
    model_name: str
    input_shapes: list[Shape] | None
    recognised: bool = False
    structure_name: str | None = None  # the structure file, given or named by the source
    config: object = None  # the OpenMMLab config the model was built from


def load(model: object = None, ckpt: str | Path | Mapping | None = None,
         structure: str | Path | Mapping | None = None) -> Loaded:
    """The searched model from a source (``SOURCES``), a checkpoint and a structure file.

    ``model`` may also hold its search ops already (mmcv's ``RFSearchHook.init_model``, ``RFConv2d``, G2L):
    they are read in place and need no files. ``ckpt`` may be a state dict, ``structure`` the structure
    file's data (a dict), instead of paths. Without ``model``, the zoo architecture the checkpoint fits.
    """
    state, progress = _checkpoint(ckpt)
    ckpt_name = source_name(ckpt, "state dict")
    recognised = model is None
    if recognised:
        if state is None:
            raise RFDeployError("--model is needed when no checkpoint is given")
        model = recognise.zoo_model_of(state, ckpt_name)
    plain = architecture(model)
    parsed = structure_of(plain, structure)
    structure_name = source_name(structure, "structure dict") if structure is not None else plain.structure_name
    shapes = [tuple(plain.input_shape)] if plain.input_shape else None
    if search_ops(plain.module):
        searched, info = _adopt(plain.module, plain.name, state is not None or structure is not None)
        return Loaded(searched, info, plain.name, shapes, recognised)
    searched, info = build_searched(plain.module, parsed, state, ckpt_name)
    info.notes.extend(plain.notes)
    note_provenance(info, weights_origin(model, state is not None), parsed, progress, ckpt_name,
                    len(involution_layers(searched)))
    return Loaded(searched, info, plain.name, shapes, recognised, structure_name, plain.config)


def source_name(source, kind: str) -> str:
    """A file's path, or ``<KIND>`` for data handed over in memory."""
    return f"<{kind}>" if isinstance(source, Mapping) else str(source)


def _structure(structure: str | Path | Mapping | None, name: str | None = None) -> Structure | None:
    if structure is None:
        return None
    if isinstance(structure, Mapping):
        return parse_structure(dict(structure), name or "<structure dict>")
    if not isinstance(structure, (str, Path)):
        raise RFDeployError(f"structure must be a path or a structure dict, not {type(structure).__name__}")
    return load_structure(structure)


def _checkpoint(ckpt: str | Path | Mapping | None) -> tuple[StateDict | None, TrainingProgress]:
    if ckpt is None:
        return None, TrainingProgress()
    if isinstance(ckpt, Mapping):
        return state_dict_of(dict(ckpt), Path(source_name(ckpt, "state dict"))), progress_of(dict(ckpt))
    if not isinstance(ckpt, (str, Path)):
        raise RFDeployError(f"ckpt must be a path or a state dict, not {type(ckpt).__name__}")
    return read_checkpoint(ckpt)


def _adopt(model: nn.Module, name: str, files_given: bool) -> tuple[nn.Module, LoadInfo]:
    """A model that holds its search ops already: those ops, read in place."""
    if files_given:
        first = next(iter(search_ops(model)))
        raise RFDeployError(f"model '{name}' already holds search ops (e.g. '{first}') with their own rates and "
                            f"alphas; give it without a checkpoint or structure file")
    searched, formats = adopt_search_ops(model)
    kinds = sorted(set(formats.values()))
    info = LoadInfo(checkpoint_format="in-memory " + "+".join(kinds), searched=list(formats), weights="model")
    return searched, info
