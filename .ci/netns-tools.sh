#!/usr/bin/env bash
# Installs the system tools of tests/reliability/test_partition.py, which cuts a
# worker off the database with a network namespace (iproute2's `ip netns`, a veth
# pair) and an iptables DROP. Run by tox before the tests (commands_pre) and by
# the test itself when they are missing. Never fails the run: where it cannot
# install (not root, no apt-get), the test is skipped and prints why.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

missing=()
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || [ -x /sbin/iptables ] || missing+=(iptables)
[ "${#missing[@]}" -eq 0 ] ||
    apt_install netns-tools "the network partition test will be skipped" --no-install-recommends "${missing[@]}"
exit 0
