"""Shared test support: stacks, builders, waiting helpers."""
