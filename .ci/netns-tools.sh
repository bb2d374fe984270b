#!/usr/bin/env bash
# Installs the system tools of tests/reliability/test_partition.py, which cuts a
# worker off the database with a network namespace (iproute2's `ip netns`, a veth
# pair) and an iptables DROP. Run by tox before the tests (commands_pre) and by
# the test itself when they are missing. Never fails the run: where it cannot
# install (not root, no apt-get), the test is skipped and prints why.
set -uo pipefail

missing=()
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || [ -x /sbin/iptables ] || missing+=(iptables)
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "netns-tools: ${missing[*]} missing and not installable here (needs root and apt-get);" \
        "the network partition test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "netns-tools: installing ${missing[*]}" >&2
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    # The package lists may be absent or stale on a fresh machine.
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        echo "netns-tools: could not install ${missing[*]}; the network partition test will be skipped" >&2
fi
exit 0
