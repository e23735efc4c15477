#!/bin/sh
# Install Debian's chromium for the browser tests when it is missing. Never downloads a browser
# of a test tool. When it cannot install (not root, no apt), the browser tests skip and say why.
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium missing and cannot be installed here (needs root and apt-get): browser tests will skip"
    exit 0
fi
echo "installing Debian's chromium for the browser tests"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium chromium-driver >/tmp/beamwatch-chromium-install.log 2>&1 \
    || { apt-get update -q >>/tmp/beamwatch-chromium-install.log 2>&1 \
         && apt-get install -y -q chromium chromium-driver >>/tmp/beamwatch-chromium-install.log 2>&1; } \
    || echo "chromium could not be installed (see /tmp/beamwatch-chromium-install.log): browser tests will skip"
exit 0
