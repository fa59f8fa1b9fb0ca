#!/usr/bin/env bash
# The system packages the test suite needs: a real redis-server (the Redis Streams tests) and Debian's
# chromium (the page's end-to-end test drives it through Playwright). Installed with apt-get when missing
# (as root, or through passwordless sudo); otherwise the packages are named and the exit status is 1, so
# `make test` never runs a suite that would skip those tests.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "error: the tests need these system packages: ${missing[*]}" >&2
    echo "       install them (e.g. sudo apt-get install -y ${missing[*]}) and run make test again" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: the tests need ${missing[*]}, and this machine has no apt-get: install them by hand" >&2
    exit 1
fi
echo "installing system packages for the tests: ${missing[*]}"
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
# the tests start their own servers on free loopback ports: the distribution's service is not needed
$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
