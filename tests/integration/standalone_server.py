"""Serve SecantusDB as a standalone server (no replica set): ``python standalone_server.py DIR`` prints its URI.

The embedded server of the test suite always reports a replica set; the
doctor's test needs a server that does not, and SecantusDB starts as one
with ``replica_set_name=None``. It serves until its stdin closes.
"""

from __future__ import annotations

import sys

from secantus import SecantusDBServer

if __name__ == "__main__":
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=sys.argv[1], replica_set_name=None)
    server.start()
    try:
        print(server.uri, flush=True)
        sys.stdin.read()
    finally:
        server.stop()
