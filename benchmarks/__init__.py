"""Benchmarks, each a script (``python benchmarks/NAME.py``); a package so that tests import
them."""
