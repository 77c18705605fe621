#!/usr/bin/env bash
# The browser tests drive Debian's Chromium. Install it when it is missing and this user is root;
# otherwise say why those tests will skip. Never fails the test run by itself.
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then exit 0; fi
  echo "could not install chromium: the browser tests will skip" >&2
  exit 0
fi
echo "chromium is missing and this user cannot install it: the browser tests will skip" >&2
