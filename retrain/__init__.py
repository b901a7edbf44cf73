"""Training-set building, training, validation, registration and promotion."""
