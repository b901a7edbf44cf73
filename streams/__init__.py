"""The Faust app: topology, agents and the JSON topic contracts."""
