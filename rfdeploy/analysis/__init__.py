"""Receptive-field analysis: what a dilation search did to a network's receptive fields, and which layers
no longer add context at the input size the network will run at."""

from rfdeploy.analysis.report import JoinRF, LayerRF, RFReport, analyze, receptive_field_report

__all__ = ["JoinRF", "LayerRF", "RFReport", "analyze", "receptive_field_report"]
