#!/usr/bin/env bash
# Make `prometheus` and `promtool` (Debian package `prometheus`) available for `make test`.
#
# Already on PATH: nothing to do. Missing and root with apt-get: install the package without its
# recommends and without starting its service. Otherwise say why; the tests that need the
# binaries are then skipped with that reason (never a failure of this script).
set -u

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure-prometheus: prometheus/promtool not found and not root: install the Debian package" \
         "'prometheus' to run the Prometheus tests (they will be skipped)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: prometheus/promtool not found and no apt-get here: the Prometheus tests" \
         "will be skipped" >&2
    exit 0
fi

echo "ensure-prometheus: installing the Debian package 'prometheus' (promtool + server for tests)" >&2
# Never start the packaged daemon (it would listen on :9090): policy-rc.d 101 = "action forbidden".
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
status=0
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || status=$?
if [ "$created_policy" = "1" ]; then
    rm -f "$policy"
fi
if [ "$status" != "0" ] || ! command -v promtool >/dev/null 2>&1; then
    echo "ensure-prometheus: apt-get install prometheus failed (exit $status): the Prometheus tests" \
         "will be skipped" >&2
fi
exit 0
