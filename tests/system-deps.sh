#!/usr/bin/env bash
# What the real-service tests need from the system, installed where this machine allows (Debian's apt-get, as root
# or with passwordless sudo): PostgreSQL (initdb/pg_ctl; the PostgreSQL tests start their own server on loopback)
# and Chromium (the dashboard test opens it headless). Where neither works the tests skip, and this says which and
# the one command that brings them in. Called by `make test` (and so by .ci/run); each step is skipped when done.
set -uo pipefail

install() {  # install() PACKAGE: apt-get as root, else sudo -n; quiet; returns apt's status
    if ! command -v apt-get >/dev/null 2>&1; then return 1; fi
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q "$1" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$1" >/dev/null 2>&1; }
    else
        sudo -n apt-get install -y -q "$1" >/dev/null 2>&1
    fi
}

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "system-deps: installing postgresql (for tests/test_storage.py and tests/test_lifecycle.py) ..."
    install postgresql || echo "system-deps: postgresql is missing and could not be installed: the PostgreSQL" \
        "tests (tests/test_storage.py, tests/test_lifecycle.py -k postgresql) will SKIP; bring them in with:" \
        "sudo apt-get install postgresql"
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "system-deps: installing chromium (for tests/test_dashboard.py) ..."
    install chromium || echo "system-deps: chromium is missing and could not be installed: the dashboard browser" \
        "test (tests/test_dashboard.py) will SKIP; bring it in with: sudo apt-get install chromium"
fi
exit 0
