# p2pimg: `make demo` shows it working, `make test` checks it.
GO        ?= go
BIN       := bin/p2pimg
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME  ?= 30s

SOAKTIME  ?= 10m

.PHONY: all build test test-short lint bench bench-smoke bench-micro sim demo fuzz soak conformance clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/p2pimg

# The README's test command: lint (vet, gofmt, staticcheck, layering), then
# every test, end-to-end daemon tests included.
test: lint
	$(GO) test -count=1 -timeout 9m ./...

test-short:
	$(GO) test -short -count=1 ./...

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...
	./.ci/layering.sh

# The figures of the issues, as one table (reference image: 1 GiB). The
# rsync rows need rsync, the fan-out rows root (network namespaces, tc).
bench: build
	$(GO) run ./testnet/bench -bin $(BIN)

# Every part of the bench once, on a 64 MiB image (32 MiB for the fan-out
# and bad-peer parts) with fewer samples, in a few minutes: it fails only if
# a part fails, never on a target (CI runs it after `make test`).
bench-smoke: build
	$(GO) run ./testnet/bench -bin $(BIN) -smoke

# The catalogue on 10 -> 1,000 simulated nodes and 100 -> 100,000 records
# (real node/gossip over libp2p's mocknet), one table.
sim:
	$(GO) run ./testnet/sim

# Go micro-benchmarks (chunker, hashing).
bench-micro:
	$(GO) test -run xxx -bench . -benchtime 5x ./chunk/

# A walk-through on this machine; it cleans up after itself.
demo: build
	./testnet/demo.sh $(BIN)

# Every decoder of untrusted bytes, each for FUZZTIME.
fuzz:
	$(GO) test -run xxx -fuzz '^FuzzDecodeManifest$$' -fuzztime $(FUZZTIME) ./chunk/
	$(GO) test -run xxx -fuzz '^FuzzDecodeBatch$$' -fuzztime $(FUZZTIME) ./node/gossip/
	$(GO) test -run xxx -fuzz '^FuzzSyncFrame$$' -fuzztime $(FUZZTIME) ./node/gossip/
	$(GO) test -run xxx -fuzz '^FuzzDecodeChunkRequest$$' -fuzztime $(FUZZTIME) ./node/xchg/
	$(GO) test -run xxx -fuzz '^FuzzReadFrames$$' -fuzztime $(FUZZTIME) ./node/xchg/
	$(GO) test -run xxx -fuzz '^FuzzSeatRequest$$' -fuzztime $(FUZZTIME) ./node/seats/
	$(GO) test -run xxx -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./license/
	$(GO) test -run xxx -fuzz '^FuzzDecodeSeats$$' -fuzztime $(FUZZTIME) ./license/
	$(GO) test -run xxx -fuzz '^FuzzUntar$$' -fuzztime $(FUZZTIME) ./chunk/oci/
	$(GO) test -run xxx -fuzz '^FuzzPolicy$$' -fuzztime $(FUZZTIME) ./policy/
	$(GO) test -run xxx -fuzz '^FuzzAPIJSON$$' -fuzztime $(FUZZTIME) ./node/localapi/
	$(GO) test -run xxx -fuzz '^FuzzSum256Many$$' -fuzztime $(FUZZTIME) ./chunk/internal/sha256x16/

# The fault tests for SOAKTIME each instead of their short runs in `make
# test`: seats under kills, pauses and partitions (checked for
# over-allocation), then the 6-host churn of layers, activations and seats
# (checked for convergence, store integrity, memory and over-allocation).
soak:
	$(GO) test -count=1 -timeout 0 -run '^(TestSeatFaults|TestChurn)$$' -v ./cmd/p2pimg -seat-soak $(SOAKTIME) -churn-soak $(SOAKTIME)

# The OCI distribution-spec conformance suite (its Go module, through the
# module proxy), pull workflow, against a host's registry mirror serving an
# image and a multi-platform index from its peer (TestRegistryConformance).
CONFORMANCE := github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111
conformance:
	@mkdir -p bin
	$(GO) mod download $(CONFORMANCE)
	rm -rf bin/conformance-src && cp -r $$($(GO) env GOMODCACHE)/$(CONFORMANCE) bin/conformance-src && chmod -R u+w bin/conformance-src
	cd bin/conformance-src && $(GO) test -c -o ../oci-conformance.test .
	P2PIMG_OCI_CONFORMANCE=$(CURDIR)/bin/oci-conformance.test $(GO) test -count=1 -run '^TestRegistryConformance$$' ./testnet/

clean:
	rm -rf bin
