"""A Django app whose ``jobs`` module autodiscovery must find."""
