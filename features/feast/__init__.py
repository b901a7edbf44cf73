"""The bridge to Feast: objects derived from the spec, the online/offline writer, point-in-time history."""
