"""The jobs a user runs (``python jobs/NAME.py``); a package so that tests import them."""
