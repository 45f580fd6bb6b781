"""`clipforge demo`: the first thing a new user runs."""

from .run import run_demo

__all__ = ["run_demo"]
