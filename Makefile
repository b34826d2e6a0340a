# p2pimg: `make demo` shows it working, `make test` checks it.
GO        ?= go
BIN       := bin/p2pimg
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME  ?= 30s

SOAKTIME  ?= 10m
NFPM      := github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0
DEBVERSION := 0.0~git$(shell git rev-parse --short HEAD 2>/dev/null || echo 0)

.PHONY: all build test test-short lint bench bench-smoke bench-micro sim demo fuzz soak conformance clean package

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

# Go micro-benchmarks (chunker, hashing; the fleet view's model at 1,000 hosts).
bench-micro:
	$(GO) test -run xxx -bench . -benchtime 5x ./chunk/
	$(GO) test -run xxx -bench BenchmarkFleetMatrix -benchtime 5x ./node/

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
	$(GO) test -run xxx -fuzz '^FuzzReadNotes$$' -fuzztime $(FUZZTIME) ./node/xchg/
	$(GO) test -run xxx -fuzz '^FuzzSeatRequest$$' -fuzztime $(FUZZTIME) ./node/seats/
	$(GO) test -run xxx -fuzz '^FuzzSeatNote$$' -fuzztime $(FUZZTIME) ./node/seats/
	$(GO) test -run xxx -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./license/
	$(GO) test -run xxx -fuzz '^FuzzDecodeSeats$$' -fuzztime $(FUZZTIME) ./license/
	$(GO) test -run xxx -fuzz '^FuzzUntar$$' -fuzztime $(FUZZTIME) ./chunk/oci/
	$(GO) test -run xxx -fuzz '^FuzzDecodeTrace$$' -fuzztime $(FUZZTIME) ./node/activate/
	$(GO) test -run xxx -fuzz '^FuzzOpenDockerSave$$' -fuzztime $(FUZZTIME) ./chunk/oci/
	$(GO) test -run xxx -fuzz '^FuzzPolicy$$' -fuzztime $(FUZZTIME) ./policy/
	$(GO) test -run xxx -fuzz '^FuzzAPIJSON$$' -fuzztime $(FUZZTIME) ./node/localapi/
	$(GO) test -run xxx -fuzz '^FuzzSum256Many$$' -fuzztime $(FUZZTIME) ./chunk/internal/sha256x16/

# The fault tests for SOAKTIME each instead of their short runs in `make
# test`: seats under kills, pauses and partitions (checked for
# over-allocation), then the 6-host churn of layers, activations and seats
# (checked for convergence, store integrity, memory and over-allocation),
# with two misbehaving members beside them (garbage chunk items, layers
# claimed and never served; nothing they send may be accepted).
soak:
	$(GO) test -count=1 -timeout 0 -run '^(TestSeatFaults|TestChurn)$$' -v ./cmd/p2pimg -seat-soak $(SOAKTIME) -churn-soak $(SOAKTIME)

# A .deb (nfpm): the binary, the systemd unit, /etc/p2pimg/daemon.toml, the
# p2pimg group; then installed into a scratch root and checked.
package: build
	rm -f bin/p2pimg_*.deb
	GOARCH=$$($(GO) env GOARCH) P2PIMG_DEB_VERSION=$(DEBVERSION) $(GO) run $(NFPM) pkg --packager deb --config cmd/p2pimg/dist/nfpm.yaml --target bin/
	./cmd/p2pimg/dist/check-deb.sh bin/p2pimg_*.deb

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
