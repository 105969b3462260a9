#!/usr/bin/env bash
# Prepares Vault or OpenBao for manifests/examples/app.yaml: a policy that can read one
# secret, the Kubernetes auth method, and a role bound to the service account `app` in
# the namespace `demo` only. Safe to run again: every step writes the same state.
#
# Needs: the `bao` or `vault` CLI, logged in with a token that may manage policies and
# auth methods (VAULT_ADDR / BAO_ADDR and VAULT_TOKEN / BAO_TOKEN as usual).
#
# Settings (environment):
#   KUBERNETES_HOST     API server address Vault sends TokenReviews to
#                       (default https://kubernetes.default.svc, right when Vault runs
#                       in the same cluster)
#   KUBERNETES_CA_FILE  PEM CA of that API server (default: the in-pod service-account
#                       CA; required when Vault runs outside the cluster)
#   AUTH_PATH           mount of the Kubernetes auth method (default kubernetes)
#   KV_MOUNT            mount of the KV v2 engine (default secret)
#   SAMPLE_SECRET       1 (default) writes a sample secret at <KV_MOUNT>/demo/app if
#                       none is there; 0 leaves it to you
set -euo pipefail

cli=${VAULT_CLI:-$(command -v bao || command -v vault || true)}
[ -n "$cli" ] || { echo "vault-setup: neither bao nor vault is on PATH" >&2; exit 1; }

namespace=demo
service_account=app
role=demo-app
policy=demo-app
auth_path=${AUTH_PATH:-kubernetes}
kv_mount=${KV_MOUNT:-secret}
kubernetes_host=${KUBERNETES_HOST:-https://kubernetes.default.svc}
kubernetes_ca_file=${KUBERNETES_CA_FILE:-/var/run/secrets/kubernetes.io/serviceaccount/ca.crt}

if ! "$cli" secrets list -format=json | grep -q "\"${kv_mount}/\""; then
  "$cli" secrets enable -path="$kv_mount" kv-v2
fi

# Read-only, and only this application's secret. The agent renews and revokes its own
# token through the default policy, which every token has.
"$cli" policy write "$policy" - <<POLICY
path "${kv_mount}/data/demo/app" {
  capabilities = ["read"]
}
POLICY

if ! "$cli" auth list -format=json | grep -q "\"${auth_path}/\""; then
  "$cli" auth enable -path="$auth_path" kubernetes
fi
[ -r "$kubernetes_ca_file" ] || {
  echo "vault-setup: cannot read the API server CA $kubernetes_ca_file; set KUBERNETES_CA_FILE" >&2
  exit 1
}
"$cli" write "auth/${auth_path}/config" \
  kubernetes_host="$kubernetes_host" \
  kubernetes_ca_cert=@"$kubernetes_ca_file"

# One service account in one namespace. audience=vault matches the projected token the
# webhook mounts into the agent (audience vault, 600 s), so a token minted for the API
# server or another service is refused.
"$cli" write "auth/${auth_path}/role/${role}" \
  bound_service_account_names="$service_account" \
  bound_service_account_namespaces="$namespace" \
  audience=vault \
  token_policies="$policy" \
  token_ttl=1h \
  token_max_ttl=24h

if [ "${SAMPLE_SECRET:-1}" = 1 ] && ! "$cli" kv get -mount="$kv_mount" demo/app >/dev/null 2>&1; then
  "$cli" kv put -mount="$kv_mount" demo/app username=app password="$(head -c 18 /dev/urandom | base64)"
fi

echo "vault-setup: role ${role} on auth/${auth_path} is bound to ${namespace}/${service_account}, policy ${policy}"
