"""rfdeploy: compile receptive-field-searched CNNs into exact plain-conv models."""

from rfdeploy.api import ExportResult, Loaded, OptimizeResult, compile, export, load, optimize
from rfdeploy.errors import RFDeployError

__version__ = "0.1.0"
__all__ = ["ExportResult", "Loaded", "OptimizeResult", "RFDeployError", "__version__", "compile", "export", "load",
           "optimize"]
