"""The three drift monitors (data, concept, quality) and the drift report they make."""
