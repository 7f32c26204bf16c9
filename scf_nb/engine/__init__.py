"""The engine: one thread that dispatches events to instances, and its parts (see engine.py)."""
