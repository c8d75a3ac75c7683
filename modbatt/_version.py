"""The package version, defined once (layer 0): the package root re-exports it, the build reads it."""

__version__ = "0.1.0"
