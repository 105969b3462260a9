#!/usr/bin/env bash
# Installs what `make bench` needs beyond `make setup`: the wrk load generator (Debian).
set -euo pipefail
if ! command -v wrk >/dev/null 2>&1; then
  printf '\033[1m==> %s\033[0m\n' "installing wrk (HTTP load generator) for the webhook benchmark"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
