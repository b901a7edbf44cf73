"""Model flavors (their registry: flavors.py), MLflow registry access and champion/canary/shadow routing."""
