"""Analyses: each reads data and activations and returns one result object with ``.write(folder)``."""
