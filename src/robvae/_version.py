"""The package version (layer 0: importable from anywhere without importing the package API)."""

__version__ = "0.1.0"
