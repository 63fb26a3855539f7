# Tally — build, test and run targets. `make test` works on a fresh Debian machine: it
# installs the system packages RocksDB needs first (scripts/bootstrap.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# One persistent target directory outside the clone: a cold build (RocksDB, libp2p)
# takes 15+ minutes on two cores, a warm one seconds.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tally/target
# RocksDB's C++ is compiled once per machine (scripts/rocksdb-prebuild.sh, run by
# bootstrap) and every profile links that archive: debug, release and bench builds no
# longer compile it three times. ROCKSDB_COMPILE=1 makes librocksdb-sys compile it in-tree.
ROCKSDB_VERSION := $(shell awk '/^name = "librocksdb-sys"$$/ { getline; gsub(/"/, "", $$3); print $$3; exit }' Cargo.lock)
export ROCKSDB_LIB_DIR ?= $(HOME)/.cache/tally/rocksdb/$(ROCKSDB_VERSION)
export ROCKSDB_STATIC ?= 1
CARGO ?= cargo
SEEDS ?= 5000

.PHONY: help bootstrap build release test lint fmt bench soak env

help:
	@echo "make testnet   - release build, then a local testnet: 4 validators + 1 full node (Ctrl-C stops it)"
	@echo "make test      - install system deps if missing, then run the whole test suite (upgrade-test last)"
	@echo "make upgrade-test - build the release in upgrade/BASE, roll a network of it onto this tree"
	@echo "make lint      - rustfmt check + clippy (-D warnings)"
	@echo "make build     - debug build of every crate"
	@echo "make release   - optimised build of tallyd and tally"
	@echo "make bench     - ledger (verify rate, check+apply at 10k/1M accounts) and sync benchmarks"
	@echo "make soak      - long runs: consensus simulation (SEEDS=$(SEEDS)), byzantine peers, crash torture"
	@echo "make monitor   - Prometheus against the local testnet (make monitor-stop stops it)"
	@echo "make env       - the build variables, for cargo outside make: eval \"\$$(make -s env)\""

bootstrap:
	@bash scripts/bootstrap.sh

# The build environment as shell exports, for cargo run outside make on the same target
# directory (`eval "$$(make -s env)"`): a cargo with other RocksDB variables would make
# librocksdb-sys rebuild, and the next make build rebuild it back.
env:
	@echo "export CARGO_TARGET_DIR='$(CARGO_TARGET_DIR)' ROCKSDB_LIB_DIR='$(ROCKSDB_LIB_DIR)' ROCKSDB_STATIC='$(ROCKSDB_STATIC)'"

build: bootstrap
	$(CARGO) build --workspace --all-targets

release: bootstrap
	$(CARGO) build --release -p tally-node -p tally-wallet

# The real-stack tests (tests/it) run target/debug/tallyd, tally and tally-attacker as child
# processes. Neither `cargo nextest run` nor `cargo test` builds them (a package's binaries
# are built only for its own integration tests, and tally-node has none), so build them
# first: from an empty target directory the tests would otherwise find no tallyd. With the
# tests in the same build, dev-dependency features are unified as in the test run's build,
# which then has nothing left to compile (with --bins alone ~40 crates compiled twice).
test: bootstrap
	@bash scripts/upgrade-test.sh base
	$(CARGO) build --workspace --bins --tests
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi
	@bash scripts/upgrade-test.sh

# The rolling-upgrade harness (issue 21; scripts/upgrade-test.sh, tests/it/upgrade.rs):
# builds the previous release -- the commit in upgrade/BASE -- in a temporary git worktree
# on the same target directory (kept in $(CARGO_TARGET_DIR)/upgrade-base/<commit>, so once
# per commit; the workspace crates it leaves are cleaned, as they share our artifact names),
# then starts 4 validators + 1 full node on it and restarts them onto this tree's tallyd
# one at a time under load. TALLY_BASE_BIN=<dir> uses binaries built elsewhere. make test
# builds BASE first (upgrade-test.sh base), so that clean never costs a second build.
.PHONY: upgrade-test
upgrade-test: bootstrap
	@bash scripts/upgrade-test.sh

lint: bootstrap
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: bootstrap
	$(CARGO) bench -p ledger --bench ledger

soak: bootstrap
	TALLY_SIM_SEEDS=$(SEEDS) $(CARGO) test -p consensus --release --test sim -- --ignored soak --nocapture
	TALLY_BYZ_SECS=60 $(CARGO) test -p tally-tests --test it -- byzantine --nocapture --test-threads=1

# A local 4-validator + 1 full-node testnet on 127.0.0.2-6 (RPC :26657, metrics :26660),
# live status table, Ctrl-C stops every node. Running it again resumes the same chain.
TESTNET_DIR ?= ./testnet
.PHONY: testnet
testnet: release
	$(CARGO_TARGET_DIR)/release/tallyd testnet up --validators 4 --full-nodes 1 --dir $(TESTNET_DIR)

# Sync (node/benches/sync.rs): a fresh store syncing 10,000 blocks with transfers from a
# peer store, in blocks/s and tx/s, against the single-core apply rate of the same run.
bench: bench-sync
.PHONY: bench-sync soak-crash
bench-sync: bootstrap
	$(CARGO) bench -p tally-node --bench sync

# Network faults (tests/it/netfaults.rs, scenario 10): a seeded random schedule of
# partitions, isolations, one-way links, pauses, kills, skewed clocks, double signing and a
# full disk on a netns testnet for 10 minutes, the checker at the end; the seed is printed
# (TALLY_NETSOAK_SEED replays it); scenario 8 (tests/it/netcrowd.rs): 10 fresh full nodes
# join a 2,000-block chain at once. Then scenarios 1-9 at the issue's lengths
# (TALLY_NETFAULTS_LONG=1: 2 minutes of flapping, a 30 s pause, 60 s of skew). Needs root.
.PHONY: soak-netfaults
soak: soak-netfaults
soak-netfaults: bootstrap
	TALLY_NETSOAK_SECS=$${TALLY_NETSOAK_SECS:-600} $(CARGO) test -p tally-tests --test it -- --ignored netfaults::scenario_10 netcrowd::scenario_8_crowd_of_joiners --nocapture
	TALLY_NETFAULTS_LONG=1 $(CARGO) test -p tally-tests --test it -- netfaults:: --test-threads=1 --nocapture

# Crash torture (tests/it/crash.rs): a validator SIGKILLed and restarted 20 times under load.
soak: soak-crash
soak-crash: bootstrap
	TALLY_CRASH_ROUNDS=20 $(CARGO) test -p tally-tests --test it -- crash::validator_killed --nocapture

# Monitoring of the local testnet: a real Prometheus (Debian's package, installed when
# missing) with configs/prometheus.yml, in the background; data under ./testnet/prometheus.
.PHONY: monitor monitor-stop
monitor:
	@bash scripts/monitor.sh start

monitor-stop:
	@bash scripts/monitor.sh stop

# Network benchmark (issue 12): release build, raw k256 verify rate (the limit), 4 validators
# + 1 full node on 127.0.60.2-6 with 1M genesis accounts driven by `tally bench` at rising
# rates until committed TPS stops growing, then each optimisation switched off at that rate;
# writes bench/network.md and bench/network.json (scripts/bench-net.sh).
.PHONY: bench-net
bench-net: bootstrap
	@bash scripts/bench-net.sh
