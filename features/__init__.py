"""Windowed feature computation and the bridge to Feast."""
