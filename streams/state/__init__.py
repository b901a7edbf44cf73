"""The worker's state: changelog-backed tables, the output journal and the checkpoint that makes them exact."""
