# plumb: container networking plugins. `make test` as root does all set-up.
GO      ?= go
BIN     ?= bin
DESTDIR ?=
CNI_BIN ?= /opt/cni/bin
VERSION ?= v0.1.0
SUMMARY ?= /tmp/plumb-test-summary.txt
FUZZTIME ?= 3s
LDFLAGS := -s -w -X github.com/plumbnet/plumb/internal/cniplugin.Version=$(VERSION)

# One main package per plugin binary; the binary takes the folder's name.
PLUGINS := ./plugins/loopback ./plugins/bridge ./ipam/host-local ./plugins/firewall ./plugins/tuning ./plugins/bandwidth ./portmap

.PHONY: all build test deps lint install clean demo fuzz

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(PLUGINS)

# deps installs what the tests need (iptables, nftables, iproute2) when missing
# and fetches the Go modules while the uplink is reachable: the tests run in
# network namespaces that have none.
REF_HOST_LOCAL = github.com/containernetworking/plugins/plugins/ipam/host-local

deps:
	@bash scripts/deps.sh
	$(GO) mod download
	@# The reference host-local, built by the compatibility tests: fetch its modules too.
	$(GO) build -o /dev/null $(REF_HOST_LOCAL)

# test prints a summary at the end: crash points tried, parallel operations,
# fuzz inputs, with their leak and duplicate counts.
test: deps build lint
	@rm -f $(SUMMARY)
	PLUMB_TEST_SUMMARY=$(SUMMARY) $(GO) test -count=1 -timeout 12m ./...
	@bash -o pipefail -c 'FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh | tee -a $(SUMMARY) | tail -1' || { grep -v ': [0-9]* inputs, no failure' $(SUMMARY) | tail -20; exit 1; }
	@echo; echo "== test summary"; grep -v '^fuzz: .*: ' $(SUMMARY) || true

# fuzz runs every fuzz target; FUZZTIME=5m for a long run.
fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# demo: a working container network in throwaway namespaces (root).
demo: deps
	bash scripts/demo.sh

# test-clients: plumb under the programs that use it (cnitool, podman's CNI
# backend, containerd's CRI through crictl), root, in throwaway namespaces
# only. scripts/clients-setup.sh first installs what is missing (Debian
# packages, cnitool and crictl at pinned versions); a client that cannot be
# installed or started is skipped with the reason. About a minute.
.PHONY: test-clients
test-clients: deps
	@bash scripts/clients-setup.sh
	PLUMB_TEST_CLIENTS=1 $(GO) test -count=1 -timeout 8m -v ./clients/

# bench: plumb against the reference plugins (root; throwaway namespaces only;
# ~13 minutes). BENCH_FLAGS=-quick for a short try; flags: go run ./bench -h.
# Prints the table and writes bench/results/<date>-<host>.json.
BENCH_FLAGS ?=
.PHONY: bench
bench: deps
	$(GO) run ./bench $(BENCH_FLAGS)

install: build
	install -d $(DESTDIR)$(CNI_BIN)
	install -m 0755 $(BIN)/* $(DESTDIR)$(CNI_BIN)/

clean:
	rm -rf $(BIN)
