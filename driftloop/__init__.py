"""driftloop: a streaming ML pipeline on Kafka that keeps its models right while the world changes."""

__version__ = "0.1.0"
