"""Choices made by measurement: each layer's lowering, the graph's layout."""
