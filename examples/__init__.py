"""Example apps of mongo-job-queue, served for real by the tests in ``tests/e2e``."""
