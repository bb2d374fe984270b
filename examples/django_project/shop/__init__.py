"""The shop app: its job handlers live in ``shop/jobs.py``."""
