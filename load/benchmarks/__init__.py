"""Benchmarks and calibrations for developers: not part of the product's code path."""
