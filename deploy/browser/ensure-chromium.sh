#!/usr/bin/env bash
# Make Debian's `chromium` available for the browser tests of `make test` (tests/e2e/test_playground.py
# drives it headless through Playwright; no browser build is ever downloaded).
#
# Already there: nothing to do. Missing and root with apt-get: install the package without its
# recommends. Otherwise say why; the browser tests are then skipped with that reason, except under
# CI=true, where they fail (CI must run them). This script itself never fails.
set -u

if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure-chromium: chromium not found and not root: install the Debian package 'chromium'" \
         "to run the browser playground tests (they will be skipped)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium not found and no apt-get here: the browser playground tests" \
         "will be skipped" >&2
    exit 0
fi

echo "ensure-chromium: installing the Debian package 'chromium' (headless browser for tests)" >&2
export DEBIAN_FRONTEND=noninteractive
status=0
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || status=$?
if [ "$status" != "0" ] || ! command -v chromium >/dev/null 2>&1; then
    echo "ensure-chromium: apt-get install chromium failed (exit $status): the browser playground" \
         "tests will be skipped" >&2
fi
exit 0
