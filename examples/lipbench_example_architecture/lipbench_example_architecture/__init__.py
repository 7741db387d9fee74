"""Worked example of a plug-in architecture for ``lipbench evaluate --architecture``."""
