"""The worker: topology, batch loop, validation, scoring, outcome join, changelog-backed tables, metrics,
and the JSON topic contracts."""
