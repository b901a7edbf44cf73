"""The data-plane worker process: consume, validate, window, score, join, learn, produce."""
