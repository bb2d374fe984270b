#!/usr/bin/env bash
# Installs the browser of the admin UI's real-browser tests (tests/e2e/test_admin_browser.py):
# Debian's chromium (and chromium-driver), driven by Playwright's Python package through
# its executable path. Nothing downloads a browser (no `playwright install`). Run by tox
# before the tests (commands_pre); developers run it once: `sudo .ci/browser.sh`.
# Never fails the run: where it cannot install (not root, no apt-get), the browser
# tests are skipped and print why.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] ||
    apt_install browser "the admin UI browser tests will be skipped" chromium chromium-driver
exit 0
