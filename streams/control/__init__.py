"""The control-plane process (a Faust app): drift monitors, the retrain trigger and promotion."""
