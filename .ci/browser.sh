#!/usr/bin/env bash
# Installs the browser of the admin UI's real-browser tests (tests/e2e/test_admin_browser.py):
# Debian's chromium (and chromium-driver), driven by Playwright's Python package through
# its executable path. Nothing downloads a browser (no `playwright install`). Run by tox
# before the tests (commands_pre); developers run it once: `sudo .ci/browser.sh`.
# Never fails the run: where it cannot install (not root, no apt-get), the browser
# tests are skipped and print why.
set -uo pipefail

command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing=yes
[ -z "${missing:-}" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser: chromium missing and not installable here (needs root and apt-get);" \
        "the admin UI browser tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "browser: installing chromium chromium-driver" >&2
if ! apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; then
    # The package lists may be absent or stale on a fresh machine.
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
        echo "browser: could not install chromium; the admin UI browser tests will be skipped" >&2
fi
exit 0
