#!/usr/bin/env bash
# `make images-check`: what the container images hold, proven without a Docker engine.
#
# 1. Builds the exact binaries Dockerfile.webhook and Dockerfile.agent build: same
#    target, same RUSTFLAGS, release profile, --locked (checked against the Dockerfiles,
#    so the two cannot drift apart). Reuses ./target.
# 2. Checks each is static (no program interpreter, no NEEDED library) and reports its
#    size.
# 3. Runs each in an otherwise empty root filesystem, in a private mount namespace, as
#    the images' numeric user 65532: only the binary, the CA bundle and the files the
#    run needs (its certificate, its token, /etc/hosts or /etc/resolv.conf). No shell,
#    no libc, no NSS modules, no /proc, no /dev.
#      - webhook: writes its own serving certificate (`certs`), serves reviews over TLS,
#        and checks a real OpenBao (`bao server -dev -dev-tls`) at https://localhost:PORT,
#        resolving `localhost` through /etc/hosts and verifying OpenBao's certificate
#        through the image's CA bundle. Its idle and peak memory (RSS) are reported.
#      - agent: logs in to that OpenBao (JWT auth) and renders a secret, once through
#        /etc/hosts (`localhost`), once through DNS only (/etc/resolv.conf naming a
#        one-name DNS server on 127.0.0.153, `vault.test`, tls_server_name localhost).
#    What this proves about name resolution: the static glibc binaries resolve names
#    with the `files` and `dns` backends compiled into libc.a, reading /etc/hosts and
#    /etc/resolv.conf as a pod provides them, and need no libnss_*.so in the image.
#    What it does not: search domains and ndots of a real cluster's resolv.conf
#    (glibc's own logic, unchanged by static linking), IPv6, and DNS over TCP.
#
# Needs root (unshare, chroot, port 53 on a loopback address), readelf, curl, openssl,
# python3 and .venv/bin/bao (`make setup`). Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
# As in the Dockerfiles (which say why getrandom_backend is set).
FLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"'
DOCKERFILE_FLAGS='ENV RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\""'
IMAGE_USER=65532
BAO=${SIDEKEY_BAO:-$PWD/.venv/bin/bao}
OUT=target/$TARGET/release

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'images-check: %s\n' "$*" >&2; exit 1; }

for tool in readelf curl openssl unshare chroot python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (make setup installs it)"
done
[ -x "$BAO" ] || die "$BAO is missing: run make setup"
[ "$(id -u)" = 0 ] || die "needs root (mount namespaces, chroot, port 53 on 127.0.0.153)"

# 1. The Dockerfiles' build, verbatim.
for bin in webhook agent; do
  file=Dockerfile.$bin
  grep -qxF "$DOCKERFILE_FLAGS" "$file" || die "$file does not say: $DOCKERFILE_FLAGS"
  grep -qF -- "--target $TARGET" "$file" || die "$file does not build --target $TARGET"
  grep -qF -- "cargo build --release --locked -p sidekey-$bin --bin sidekey-$bin" "$file" \
    || die "$file does not build sidekey-$bin the way this check does"
  grep -qE "^USER ${IMAGE_USER}:${IMAGE_USER}$" "$file" || die "$file does not run as ${IMAGE_USER}"
  grep -qE "^FROM scratch$" "$file" || die "$file's final stage is not FROM scratch"
done
say "building the image binaries (release, $TARGET, RUSTFLAGS=\"$FLAGS\")"
started=$(date +%s)
RUSTFLAGS="$FLAGS" cargo build --release --locked --target "$TARGET" \
  -p sidekey-webhook --bin sidekey-webhook -p sidekey-agent --bin sidekey-agent
say "built in $(( $(date +%s) - started )) s"

# 2. Static, and how big.
for bin in sidekey-webhook sidekey-agent; do
  path=$OUT/$bin
  if readelf -lW "$path" | grep -q "program interpreter"; then
    die "$bin is dynamically linked: $(readelf -lW "$path" | grep 'program interpreter')"
  fi
  if readelf -dW "$path" | grep -q "(NEEDED)"; then
    die "$bin needs shared libraries: $(readelf -dW "$path" | grep '(NEEDED)' | tr -s ' ')"
  fi
  bytes=$(stat -c %s "$path")
  echo "images-check: $bin static, $bytes bytes ($(awk "BEGIN { printf \"%.1f\", $bytes / 1048576 }") MiB)"
done

# 3. Empty roots.
work=$(mktemp -d /tmp/sidekey-images.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Runs "$@" (a path inside ROOT first) chrooted in ROOT, in a private mount namespace,
# as the image's user, with only the environment given in ENV_VARS.
# --kill-child: the run dies with its namespace's parent, whatever happens here.
CHROOT=$(command -v chroot)
in_root() {
  local root=$1; shift
  unshare --mount --fork --kill-child -- env -i "${ENV_VARS[@]}" \
    "$CHROOT" --userspec="$IMAGE_USER:$IMAGE_USER" --groups="$IMAGE_USER" "$root" "$@"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "starting OpenBao (dev, TLS) for the runs"
bao_port=$(free_port)
mkdir -p "$work/bao"
"$BAO" server -dev -dev-tls -dev-tls-cert-dir="$work/bao" \
  -dev-listen-address="127.0.0.1:$bao_port" -dev-root-token-id=images-check \
  >"$work/bao/log" 2>&1 &
pids+=($!)
export BAO_ADDR=https://127.0.0.1:$bao_port BAO_TOKEN=images-check BAO_CACERT=$work/bao/vault-ca.pem
for _ in $(seq 1 100); do "$BAO" status >/dev/null 2>&1 && break; sleep 0.2; done
"$BAO" status >/dev/null || { cat "$work/bao/log"; die "OpenBao did not start"; }

# A JWT login the agent can do offline: RS256 token signed here, key registered there.
openssl genrsa -out "$work/jwt.key" 2048 2>/dev/null
openssl rsa -in "$work/jwt.key" -pubout -out "$work/jwt.pub" 2>/dev/null
"$BAO" auth enable jwt >/dev/null
"$BAO" write auth/jwt/config jwt_validation_pubkeys=@"$work/jwt.pub" \
  bound_issuer=https://kubernetes.default.svc.cluster.local >/dev/null
printf 'path "secret/data/images-check" {\n  capabilities = ["read"]\n}\n' \
  | "$BAO" policy write images-check - >/dev/null
"$BAO" write auth/jwt/role/app role_type=jwt user_claim=sub bound_audiences=vault \
  token_policies=images-check token_ttl=10m >/dev/null
sample=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$BAO" kv put -mount=secret images-check value="$sample" >/dev/null

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
claims=$(printf '{"iss":"https://kubernetes.default.svc.cluster.local","sub":"system:serviceaccount:demo:app","aud":["vault"],"iat":%d,"nbf":%d,"exp":%d}' \
  "$now" "$now" $((now + 600)) | b64url)
signature=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign "$work/jwt.key" -binary | b64url)
jwt="$header.$claims.$signature"

# The image's CA bundle, plus OpenBao's dev CA (a cluster's Vault CA would be in the
# system roots the same way, or passed with --vault-ca-file / the ca-cert annotation).
bundle=$work/ca-certificates.crt
cat /etc/ssl/certs/ca-certificates.crt "$work/bao/vault-ca.pem" >"$bundle"

# make_root DIR BINARY: a root holding only the binary and the CA bundle.
make_root() {
  local root=$1 bin=$2
  mkdir -p "$root/etc/ssl/certs"
  cp "$OUT/$bin" "$root/$bin"
  cp "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"
}

# --- webhook ---------------------------------------------------------------------
say "webhook in an empty root: certs, TLS serving, Vault check by name"
root=$work/webhook-root
make_root "$root" sidekey-webhook
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
install -d -o "$IMAGE_USER" -g "$IMAGE_USER" "$root/tls"
ENV_VARS=()
in_root "$root" /sidekey-webhook --version
in_root "$root" /sidekey-webhook certs --out /tls 2>"$work/certs.log" \
  || { cat "$work/certs.log"; die "the webhook's certs subcommand failed in the empty root"; }
webhook_port=$(free_port)
# Not through in_root: $! must be unshare's pid, whose only child is the webhook.
unshare --mount --fork --kill-child -- env -i POD_NAMESPACE=sidekey-system \
  "$CHROOT" --userspec="$IMAGE_USER:$IMAGE_USER" --groups="$IMAGE_USER" \
  "$root" /sidekey-webhook --listen="127.0.0.1:$webhook_port" \
  --tls-cert=/tls/tls.crt --tls-key=/tls/tls.key \
  --vault-addr="https://localhost:$bao_port" --vault-check-interval=1s \
  --shutdown-delay=0s --log-format=json 2>"$work/webhook.log" &
unshare_pid=$!
pids+=("$unshare_pid")
name=sidekey-webhook.sidekey-system.svc
hook() {
  curl -sS --fail --max-time 5 --cacert "$root/tls/ca.crt" \
    --resolve "$name:$webhook_port:127.0.0.1" "$@"
}
for _ in $(seq 1 100); do hook -o /dev/null "https://$name:$webhook_port/readyz" 2>/dev/null && break; sleep 0.1; done
hook -o /dev/null "https://$name:$webhook_port/readyz" || { cat "$work/webhook.log"; die "the webhook does not answer"; }
webhook_pid=$(ps --ppid "$unshare_pid" -o pid= | tr -d ' ')
[ -n "$webhook_pid" ] || die "cannot find the webhook's pid"

up=0
for _ in $(seq 1 50); do
  up=$(hook "https://$name:$webhook_port/metrics" | sed -n 's/^sidekey_webhook_vault_up //p')
  [ "$up" = 1 ] && break
  sleep 0.2
done
[ "$up" = 1 ] || { cat "$work/webhook.log"; die "the webhook in the empty root cannot reach OpenBao at https://localhost:$bao_port"; }
echo "images-check: webhook: resolved localhost via /etc/hosts, verified OpenBao with the image CA bundle (vault_up 1)"

review=webhook/tests/data/pod-create.json
answer=$(hook -H 'content-type: application/json' --data-binary @"$review" "https://$name:$webhook_port/mutate")
case $answer in *'"patchType":"JSONPatch"'*) ;; *) die "no patch in the answer: $answer" ;; esac

sleep 2
idle_kib=$(sed -n 's/^VmRSS:\s*\([0-9]*\) kB/\1/p' "/proc/$webhook_pid/status")
requests=300
for _ in $(seq 1 "$requests"); do
  hook -o /dev/null -H 'content-type: application/json' --data-binary @"$review" \
    "https://$name:$webhook_port/mutate"
done
mutated=$(hook "https://$name:$webhook_port/metrics" | sed -n 's/^sidekey_webhook_admissions_total{outcome="mutated"} //p')
[ "$mutated" = $((requests + 1)) ] || die "expected $((requests + 1)) mutated reviews in the metrics, got $mutated"
after_kib=$(sed -n 's/^VmRSS:\s*\([0-9]*\) kB/\1/p' "/proc/$webhook_pid/status")
peak_kib=$(sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$webhook_pid/status")
echo "images-check: webhook RSS: idle ${idle_kib} KiB, after $requests reviews over fresh TLS connections ${after_kib} KiB, peak ${peak_kib} KiB"
kill -TERM "$webhook_pid"
wait "$unshare_pid" || die "the webhook did not exit 0 on SIGTERM"
grep -q '"stopped serving"' "$work/webhook.log" || die "no clean shutdown in the webhook's log"
echo "images-check: webhook: SIGTERM -> drained and exited 0"

# --- agent ---------------------------------------------------------------------
# run_agent ROOT ADDR [TLS_SERVER_NAME]: one `sidekey-agent init` in ROOT.
run_agent() {
  local root=$1 addr=$2 server_name=${3:-}
  local extra=""
  [ -z "$server_name" ] || extra=",\"tls_server_name\":\"$server_name\""
  install -d -o "$IMAGE_USER" -g "$IMAGE_USER" "$root/vault/secrets" "$root/sidekey/state"
  install -d "$root/var/run/secrets/sidekey.dev/serviceaccount"
  printf '%s' "$jwt" >"$root/var/run/secrets/sidekey.dev/serviceaccount/token"
  chmod 0644 "$root/var/run/secrets/sidekey.dev/serviceaccount/token"
  local config
  config=$(printf '{"version":1,"vault":{"addr":"%s"%s},"auth":{"method":"jwt","mount_path":"auth/jwt","role":"app","jwt_path":"/var/run/secrets/sidekey.dev/serviceaccount/token"},"secrets_dir":"/vault/secrets","state_dir":"/sidekey/state","refresh_secs":300,"secrets":[{"name":"app","path":"secret/data/images-check","file":"app.json","mode":420}]}' \
    "$addr" "$extra")
  ENV_VARS=("SIDEKEY_AGENT_CONFIG=$config" SIDEKEY_INIT_DEADLINE=30s SIDEKEY_LOG_FORMAT=json)
  in_root "$root" /sidekey-agent init 2>"$root.log" \
    || { cat "$root.log"; die "the agent failed in the empty root ($addr)"; }
  grep -qF "$sample" "$root/vault/secrets/app.json" \
    || die "the agent did not render the secret ($addr)"
  ! grep -qF "$sample" "$root.log" || die "the agent logged the secret value"
}

say "agent in an empty root: JWT login and a rendered secret, by /etc/hosts"
root=$work/agent-hosts
make_root "$root" sidekey-agent
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
run_agent "$root" "https://localhost:$bao_port"
echo "images-check: agent: resolved localhost via /etc/hosts, TLS via the image CA bundle, rendered app.json ($(stat -c %s "$root/vault/secrets/app.json") bytes)"

say "agent in an empty root: the same through DNS only (/etc/resolv.conf)"
python3 scripts/images/dns-responder.py 127.0.0.153 vault.test 127.0.0.1 >"$work/dns.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do grep -qs listening "$work/dns.log" && break; sleep 0.1; done
grep -q listening "$work/dns.log" || { cat "$work/dns.log"; die "the DNS responder did not start"; }
root=$work/agent-dns
make_root "$root" sidekey-agent
printf 'nameserver 127.0.0.153\noptions timeout:2 attempts:2\n' >"$root/etc/resolv.conf"
run_agent "$root" "https://vault.test:$bao_port" localhost
grep -q "^query vault.test 1$" "$work/dns.log" || { cat "$work/dns.log"; die "the agent did not ask the DNS server"; }
echo "images-check: agent: resolved vault.test through DNS (resolv.conf, no hosts file), verified OpenBao as localhost, rendered app.json"

say "images-check passed"
