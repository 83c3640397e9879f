#!/usr/bin/env bash
# Make sure a PostgreSQL server (initdb, pg_ctl, postgres) is installed from
# the Debian packages, for the test fixture in tests/pg.py.
# Idempotent and fast when it is already there: it only checks for binaries.
set -euo pipefail

have_binaries() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

if dir=$(have_binaries); then
    echo "postgresql: found in $dir"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "ensure-postgres: not root and no sudo; install the 'postgresql' package" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() {
    $SUDO apt-get install -y -q --no-install-recommends postgresql >/dev/null
}

echo "postgresql: installing with apt-get" >&2
if ! apt_install; then
    echo "postgresql: install failed; running apt-get update and retrying" >&2
    $SUDO apt-get update -q >/dev/null
    apt_install
fi

# The Debian package creates and starts a default cluster; the tests never use
# it (they start their own throwaway server), so do not leave it running.
if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _rest; do
        $SUDO pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
    done
fi

if dir=$(have_binaries); then
    echo "postgresql: installed in $dir"
else
    echo "ensure-postgres: installed, but no initdb/pg_ctl under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
