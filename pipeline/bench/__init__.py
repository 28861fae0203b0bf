"""Measurement and fault-injection tooling (``marketprism bench chaos``): never imported by runtime packages."""
