"""Example third-party lipbench method (see method.py)."""
