# tricopy build, test and run targets. `make help` lists them.
#
# Variables (override on the command line: make test FUZZTIME=30s):
#   GO          go command                           (default: go)
#   FUZZTIME    time per fuzz target in fuzz-short   (default: 15s)
#   FUZZJOBS    fuzz targets run at once             (default: 2)
#   RUNDIR      state directory of `make run`        (default: /tmp/tricopy-run)
#   RUNSIZE     volume size `make run` creates       (default: 1GiB)
#   BENCHDIR    scratch directory of `make bench`    (default: /tmp/tricopy-bench)
#   SEED        seed(s) of `make chaos`, comma-separated (default: 1,2,3, what CI runs)
#   DURATION    length of each `make chaos` run      (default: 2m; the long mode is 1h)
#   CHAOS_NET   loopback or netns                    (default: netns when ip, tc and nsenter work)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO        ?= go
BIN       := bin/tricopy
FUZZTIME  ?= 15s
FUZZJOBS  ?= 2
RUNDIR    ?= /tmp/tricopy-run
RUNSIZE   ?= 1GiB
BENCHDIR  ?= /tmp/tricopy-bench

# staticcheck 2026.2.2, the first line supporting Go 1.26.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# Debian packages the tests, benchmarks and `make run` need, each with a
# command that shows it is installed.
#   fuse3: fusermount3 (FUSE mounts)   fio: benchmarks   sqlite3, git, tar: POSIX workload tests
#   chromium: the web page's test (e2e/web_test.go, headless)
#   iproute2: ip and tc, the chaos test's network namespaces, partitions and slow links
DEB_PACKAGES := fuse3:fusermount3 fio:fio sqlite3:sqlite3 git:git tar:tar chromium:chromium iproute2:tc

SEED      ?= 1,2,3
DURATION  ?= 2m
CHAOS_NET ?=

.PHONY: help build deps test test-go test-procs1 fuzz-short lint bench chaos chaos-selftest run clean proto

help:
	@echo "make build       build $(BIN)"
	@echo "make deps        install the Debian packages the tests need (fuse3 fio sqlite3 git tar) if missing"
	@echo "make test        deps, all tests with -race (FUSE tests required), the FUSE packages with GOMAXPROCS=1, then fuzz-short"
	@echo "make fuzz-short  run every Fuzz* target for FUZZTIME ($(FUZZTIME)) each, FUZZJOBS ($(FUZZJOBS)) at a time"
	@echo "make lint        gofmt, go vet, staticcheck"
	@echo "make bench       deps, build, then bin/tricopy bench all (fs, submit, mirror, lag, failover) under BENCHDIR ($(BENCHDIR)), report in BENCHDIR/report"
	@echo "make chaos       the whole deployment under a seeded schedule of faults: SEED=1,2,3 DURATION=2m CHAOS_NET=netns|loopback"
	@echo "make chaos-selftest  the chaos test with each invariant of BREAKS broken on purpose (independent-apply, ack-before-commit): each must be caught"
	@echo "make proto       regenerate intermediate/wire from wire.proto (installs protoc and the Go plugins if missing)"
	@echo "make run         deps, build, then tricopy up: one intermediate node and volumes a, b mounted under RUNDIR ($(RUNDIR)) in the foreground; Ctrl-C unmounts"
	@echo "make clean       remove bin/"

build:
	$(GO) build -o $(BIN) ./cmd/tricopy

# deps checks each package's command and installs only what is missing, so it
# is quick when everything is present. Not root: print what to install.
deps:
	@missing=(); \
	for pc in $(DEB_PACKAGES); do \
		command -v "$${pc#*:}" >/dev/null 2>&1 || missing+=("$${pc%%:*}"); \
	done; \
	if [ $${#missing[@]} -eq 0 ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
		echo "missing Debian packages: $${missing[*]}"; \
		echo "install them with: sudo apt-get install -y $${missing[*]}"; \
		exit 1; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "missing packages $${missing[*]} and no apt-get: install them with your package manager"; \
		exit 1; \
	fi; \
	echo "installing $${missing[*]}"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq; \
	apt-get install -y -qq --no-install-recommends "$${missing[@]}"

# FUSE tests mount in this process tree: -p 1 runs one package at a time.
# TRICOPY_REQUIRE_FUSE makes them fail, not skip, when FUSE is unavailable.
# test-procs1 reruns the packages that mount FUSE with GOMAXPROCS=1, which
# shakes out scheduling-dependent hangs (as go-fuse's all.bash does).
test: deps
	$(MAKE) --no-print-directory test-go
	$(MAKE) --no-print-directory test-procs1
	$(MAKE) --no-print-directory fuzz-short

test-go:
	TRICOPY_REQUIRE_FUSE=1 $(GO) test -race -count=1 -p 1 -timeout 30m ./...

test-procs1:
	GOMAXPROCS=1 TRICOPY_REQUIRE_FUSE=1 $(GO) test -count=1 -p 1 -timeout 15m ./fusefs/... ./cmd/... ./intermediate/... ./blockdev/mirror/...

# fuzz-short fuzzes every Fuzz* target for FUZZTIME, FUZZJOBS at a time
# (.ci/fuzz-short).
fuzz-short:
	GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZJOBS=$(FUZZJOBS) .ci/fuzz-short

lint:
	@files=$$(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'); \
	unformatted=$$(grep -v '/testdata/' <<<"$$files" | xargs -r gofmt -l); \
	if [ -n "$$unformatted" ]; then echo "gofmt -l lists files to format:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: deps build
	mkdir -p $(BENCHDIR)
	$(BIN) bench all --dir $(BENCHDIR) --report $(BENCHDIR)/report
	@echo "Report (markdown and PNG plots): $(BENCHDIR)/report/README.md"

# chaos runs e2e's TestChaos (e2e/chaos_test.go): real processes, a seeded
# schedule of kills, pauses, partitions and slow links, invariants checked
# throughout. A failing run prints its seed and schedule; SEED=<it> replays.
chaos: deps
	TRICOPY_REQUIRE_FUSE=1 TRICOPY_CHAOS_SEEDS=$(SEED) TRICOPY_CHAOS_DURATION=$(DURATION) TRICOPY_CHAOS_NET=$(CHAOS_NET) \
		$(GO) test -count=1 -timeout 0 -v -run '^TestChaos$$' ./e2e

# chaos-selftest is the test of the tester, once per invariant of BREAKS broken
# on purpose: independent-apply (the secondaries apply without the common
# validated point: the run must catch a torn cut) and ack-before-commit (the
# primaries acknowledge before the intermediate commits: the run must catch a
# lost acknowledged write).
BREAKS ?= independent-apply ack-before-commit
chaos-selftest: deps
	for b in $(BREAKS); do \
		TRICOPY_REQUIRE_FUSE=1 TRICOPY_CHAOS_BREAK=$$b TRICOPY_CHAOS_SEEDS=$(firstword $(subst $(comma), ,$(SEED))) \
			TRICOPY_CHAOS_DURATION=$(DURATION) TRICOPY_CHAOS_NET=$(CHAOS_NET) $(GO) test -count=1 -timeout 0 -v -run '^TestChaos$$' ./e2e || exit 1; \
	done

comma := ,

# proto regenerates the committed Go code of the wire protocol. protoc comes
# from Debian (protobuf-compiler); the Go plugins at pinned versions.
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
proto:
	@command -v protoc >/dev/null 2>&1 || apt-get install -y protobuf-compiler
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO_GRPC)
	cd intermediate/wire && PATH=$(CURDIR)/bin:$$PATH protoc --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative wire.proto

# run starts the local deployment of configs/local.yaml with tricopy up: one
# intermediate node and the primaries of volumes a and b (formatted on first
# use), mirrored to it; the flags put everything under RUNDIR.
run: deps build
	@echo "tricopy up in $(RUNDIR): volumes a, b mounted at $(RUNDIR)/primary/NAME (data in $(RUNDIR)/data/NAME), intermediate node state in $(RUNDIR)/intermediate/i1; Ctrl-C unmounts"
	$(BIN) up --config configs/local.yaml --dir $(RUNDIR) --size $(RUNSIZE)

clean:
	rm -rf bin
