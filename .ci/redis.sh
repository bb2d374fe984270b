#!/usr/bin/env bash
# Installs redis-server (and redis-cli) from Debian's packages where missing: the Redis adapter's
# tests (tests/integration/test_locks.py, test_redis_wakeup.py, tests/reliability/test_lock_*.py)
# run against a real Redis, and the restart test starts throwaway servers of its own.
# Run by tox before the tests (as root it installs; it starts the shared server at 127.0.0.1:6379 if none answers).
# Never fails the run: where it cannot install (not root, no apt-get), those tests are skipped
# and say why.
set -uo pipefail

start_shared() {
    # The shared server of the Redis tests, at 127.0.0.1:6379, when none answers there.
    if command -v redis-server >/dev/null 2>&1 && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
    fi
}

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    start_shared
    exit 0
fi

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
start_shared
exit 0
