"""relay: forwards survey lifecycle events from a PostgreSQL outbox to Segment."""

__version__ = "0.1.0"
