#!/usr/bin/env bash
# Installs redis-server (and redis-cli) from Debian's packages where missing: the Redis adapter's
# tests (tests/integration/test_locks.py, test_redis_wakeup.py, tests/reliability/test_lock_*.py)
# run against a real Redis, and the restart test starts throwaway servers of its own.
# Run by .ci/run before it starts the shared server; developers run it once: `sudo .ci/redis.sh`.
# Never fails the run: where it cannot install (not root, no apt-get), those tests are skipped
# and say why.
set -uo pipefail

command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "redis: redis-server missing and not installable here (needs root and apt-get);" \
        "the Redis adapter tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "redis: installing redis-server" >&2
if ! apt-get install -y -q redis-server redis-tools >/dev/null 2>&1; then
    # The package lists may be absent or stale on a fresh machine.
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q redis-server redis-tools >/dev/null 2>&1 ||
        echo "redis: could not install redis-server; the Redis adapter tests will be skipped" >&2
fi
exit 0
