"""`driftloop backtest`: the whole loop in one process, in event time (see docs/backtest.md)."""
