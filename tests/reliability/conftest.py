"""Reliability scenarios use the shared wire-server fixtures of ``tests/conftest.py``.

Do not import fixtures from another folder's conftest here: pytest would
register them twice and start a second embedded server.
"""

from __future__ import annotations
