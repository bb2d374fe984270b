"""Development tools, never needed at runtime: the embedded wire server and the demo.

:mod:`.embedded` runs a throwaway MongoDB wire server (SecantusDB, GPL-2.0,
from the ``demo`` or ``test`` extra) for tests and the demo; :mod:`.demo` is
``mongo-job-queue demo``. Nothing in the library imports them.
"""
