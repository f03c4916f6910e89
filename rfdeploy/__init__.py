"""rfdeploy: compile receptive-field-searched CNNs into exact plain-conv models."""

__version__ = "0.1.0"
