"""Thin ZenML steps; each calls one function of the core package ``medmerge``."""
