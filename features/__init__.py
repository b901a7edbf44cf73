"""Windowed features: aggregations (a registry), the window computer, the event -> row step, and Feast."""
