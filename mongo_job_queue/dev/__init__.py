"""Development tools, never needed at runtime: the embedded wire server, the demo and the dev server.

:mod:`.embedded` runs a throwaway MongoDB wire server (SecantusDB, GPL-2.0,
from the ``demo`` or ``test`` extra) for tests and the demo; :mod:`.demo` is
``mongo-job-queue demo`` and :mod:`.server` is ``mongo-job-queue
dev-server``, the same server in the foreground for your own development.
Nothing in the library imports them.
"""
