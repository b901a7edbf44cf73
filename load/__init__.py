"""Load generator, dataset replay and benchmarks."""
