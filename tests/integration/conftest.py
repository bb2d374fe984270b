"""Integration tests use the shared wire-server fixtures of ``tests/conftest.py``."""
