"""Benchmark harness of mongo-job-queue: ``python -m bench`` (or ``tox -e bench``).

It measures the library through its public API against the same MongoDB
server and the same no-op work as its contenders: the limit (a bare pymongo
claim + completion loop), Celery on kombu's MongoDB transport, Agenda (Node)
and RQ on Redis. Contenders are alternated round by round (A, B, A, B ...)
so that drift of a shared machine hits them alike, and every figure is
reported with its spread over the repetitions.

Modules:

* :mod:`bench.__main__`: command line, sizes of the ``--tiny``/``--quick``/full runs.
* :mod:`bench.plan`: what each run size measures, and how much of it.
* :mod:`bench.runner`: server, alternation, repetitions; one function per figure.
* :mod:`bench.metrics`: command counting, CPU, resident memory, statistics.
* :mod:`bench.report`: machine and version info, the printed table, the JSON file.
* :mod:`bench.contenders`: one module per contender.
"""
