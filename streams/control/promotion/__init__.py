"""Canary and shadow trials, promotion and rollback as alias moves, and the operator's commands."""
