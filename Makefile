# obd — see README.md. `make test` is the test command CI runs.
GO       ?= go
BIN      ?= bin
FUZZTIME ?= 10s
# Installs for end-to-end work are cached under this prefix (see scripts/setup.sh).
OBD_DEPS ?= /opt/obd-deps
export OBD_DEPS

.PHONY: all build test unit fuzz fuzz-long bench vet lint deps clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	bash scripts/setup.sh

vet:
	$(GO) vet ./...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

unit:
	$(GO) test -race -timeout 25m ./...

fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

# fuzz-long runs every fuzz target for minutes (5 each unless FUZZTIME says otherwise, e.g.
# make fuzz-long FUZZTIME=30m), for a machine left alone: `make test` only fuzzes briefly.
fuzz-long: FUZZTIME = 5m
fuzz-long:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

test: deps build lint unit fuzz

# check is the quick gate before a commit, a minute or so on 2 cores once the build cache is
# warm: gofmt and go vet, then every package's tests in -short mode as a user without root runs
# them (tests that need root skip themselves). As root the tests run in a user namespace, where
# the process is not root (unshare --user); TestNbdfuse is left out there, as the setuid
# fusermount3 it runs has no privilege inside one.
.PHONY: check
check: lint
	@if [ "$$(id -u)" = 0 ] && unshare --user true 2>/dev/null; then \
		echo "unshare --user $(GO) test -short -skip '^TestNbdfuse$$' ./..."; \
		unshare --user $(GO) test -short -skip '^TestNbdfuse$$' ./...; \
	else \
		echo "$(GO) test -short ./..."; \
		$(GO) test -short ./...; \
	fi

# bench runs every Go benchmark once; each prints ratios against a baseline measured in the
# same run. OBD_BENCH_IMAGE is a real ext4 image (Debian + python3) for the size comparisons.
bench: build
	OBD_BENCH_IMAGE=$$(bash scripts/bench-image.sh) $(GO) test -run '^$$' -bench . -benchtime 1x ./... | tee bench.out

clean:
	rm -rf $(BIN)

# proto regenerates the committed gRPC code of bdd's control API (needs protoc,
# protoc-gen-go v1.36.12 and protoc-gen-go-grpc v1.5.1 on PATH; CI does not run it).
.PHONY: proto
proto:
	cd api/bdd/v1 && protoc -I. --go_out=paths=source_relative:. --go-grpc_out=paths=source_relative:. bdd.proto

# bench-fleet measures one node's start against a far origin (50 ms per request, 100 Mbit/s and
# 1 Gbit/s) straight, through a cold and a warm zone mirror, with mirror-warm, and from IPFS
# peers after a canary (about 15 minutes), then runs the fleet model on it:
# bench/fleet/firststart-*.json and fleet.png, the README's "Zone mirrors" and "Fleet scale"
# figures. Needs root for the image
# (scripts/mkdedupimages.sh, obd convert) and the benchmark's python trace (bench-coldstart).
.PHONY: bench-fleet
bench-fleet: build
	bash scripts/mkdedupimages.sh >/dev/null
	$(BIN)/obd convert --algorithm zstd --block-size 16K --work-dir $(OBD_DEPS)/dedup-work \
		oci:$(OBD_DEPS)/images/dedup-set:gcc oci:$(OBD_DEPS)/images/dedup-set-obd:gcc
	cd bench/fleet && $(GO) test -count=1 -run '^TestFirstStart$$' -timeout 1h -v . -fleet -fleet.runs 5 \
		-fleet.origin-bw 12500000 -fleet.out firststart-100mbit.json
	cd bench/fleet && $(GO) test -count=1 -run '^TestFirstStart$$' -timeout 1h -v . -fleet -fleet.runs 5 \
		-fleet.origin-bw 125000000 -fleet.out firststart-1gbit.json
	$(BIN)/obd fleet-sim --figures bench/fleet/firststart-1gbit.json --chart bench/fleet/fleet.png

# bench-sandbox measures function sandbox start latency (cold, warm from a zygote, hot from the
# handler cache) against `runc run` of the same rootfs, plus the zygote path's start rate, and
# prints the ratios. Needs root; builds the python3 rootfs once (scripts/mkrootfs.sh).
.PHONY: bench-sandbox
bench-sandbox:
	bash scripts/mkrootfs.sh >/dev/null
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench '^BenchmarkStartPaths$$' -benchtime 1x -timeout 20m ./sandbox/ | tee $(BIN)/bench-sandbox.out

# probe-policies replays a synthetic trace (240 trace minutes of 1 s) against a real obd-lambda
# under each keep-alive policy and through the simulator, and prints the live-against-simulated
# table of policy/RESULTS.md. Needs root; about 6 minutes.
.PHONY: probe-policies
probe-policies: build
	bash scripts/mkrootfs.sh >/dev/null
	BIN=$(BIN) bash scripts/probe-policies.sh

# bench-coldstart is the cold-start benchmark of issues #8 and #18 (tens of minutes, needs root,
# deps and the Debian image of convert/bench/mkimage.sh): containerd full pull vs obd lazy vs obd
# with a local trace or one from the registry vs the stargz snapshotter on plain and optimized
# eStargz images (the snapshotter and the optimizer built from bench/stargz, its own Go module),
# and, in mode soci (not a default), the SOCI snapshotter on the gzip image with a SOCI index
# (bench/soci, its own Go module too), on loopback and a shaped link. Writes bench/RESULTS.md, bench/coldstart.png and
# bench/results.json. BENCH_ARGS narrows it, e.g.
# BENCH_ARGS='-coldstart.runs 3 -coldstart.workloads python'.
BENCH_ARGS ?=
.PHONY: bench-coldstart
bench-coldstart: deps
	@mkdir -p $(BIN) $(OBD_DEPS)/bench/bin
	$(GO) build -o $(BIN)/ ./cmd/obd ./cmd/bdd ./cmd/overlaybd-snapshotter ./cmd/ctr-obd
	cd bench/stargz && $(GO) build -o $(OBD_DEPS)/bench/bin/stargz-snapshotter . && \
		$(GO) build -o $(OBD_DEPS)/bench/bin/estargz-optimize ./optimize
	cd bench/soci && $(GO) build -o $(OBD_DEPS)/bench/bin/soci-snapshotter . && \
		$(GO) build -o $(OBD_DEPS)/bench/bin/soci-index ./index
	$(GO) test -count=1 -run '^TestColdStart$$' -timeout 4h -v ./bench/coldstart -coldstart -coldstart.bin $(abspath $(BIN)) $(BENCH_ARGS) | tee $(OBD_DEPS)/bench/bench-coldstart.out

# demo is the README's main command (issue #7): an image started on fresh nodes that reach a
# private registry only over an emulated WAN link (demo/wanlink: 100 Mbit/s, 20 ms per request):
# containerd's full pull onto overlayfs against obd's lazy `nerdctl --snapshotter overlaybd run`,
# with a table of times, bytes and ratios. Everything is removed on exit and on Ctrl-C. Needs
# root. The image is Debian + python3 (scripts/mkrootfs.sh, 1.5-4 minutes the first time, then
# reused); DEMO_IMAGE=busybox is a quick one with nothing to be lazy about.
.PHONY: demo
demo: deps
	BIN=$(abspath $(BIN)) bash demo/demo.sh
