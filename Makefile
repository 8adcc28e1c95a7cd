# handnet — two commands do everything on a fresh machine:
#   make run    set up libtorch + gotch, build, then run the demo
#   make test   set up, then run every test
GO      ?= go
BIN     := bin/handnet
# Timeout for the whole test run; the cold libtch compile is not part of it.
TESTFLAGS ?= -timeout 30m

.PHONY: all setup build install test run clean fixtures fuzz browser curl-jq

all: build

# Finds libtorch (LIBTORCH=/dir, LIBTORCH_USE_PYTORCH=1, or Debian's
# libtorch-dev, installed when missing), prepares gotch and the native layer for it in ~/.cache/handnet/ and
# writes go.work. Cached: a second run takes well under a second.
setup:
	GOWORK=off $(GO) run ./tools/setup

# -buildvcs=true: in a workspace (go.work) Go stamps the commit only when
# asked; `handnet version` prints it. Left out where there is no .git.
BUILDVCS := $(if $(wildcard .git),-buildvcs=true,)

build: setup
	$(GO) build $(BUILDVCS) -o $(BIN) ./handnet/cmd/handnet

# Installs handnet as $(DESTDIR)$(PREFIX)/bin/handnet. It links libtorch
# dynamically, from where setup found it (Debian's in /usr/lib; other
# sources by rpath), so it runs from any folder on this machine.
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/handnet
	@echo "installed $(DESTDIR)$(PREFIX)/bin/handnet ($$($(BIN) version --short))"

test: setup fixtures browser torchrun image-base curl-jq
	CI=$${CI:-1} $(GO) test $(TESTFLAGS) ./...
	@echo "== the library under the race detector (32 goroutines predicting at once)"
	$(GO) test -race $(TESTFLAGS) -run 'Concurrent|Handler' ./handnet

# Fuzz every parser of outside input for FUZZTIME each (make test runs
# their seed corpora). A failing input is saved under the package's
# testdata/fuzz/ and becomes a regression test once committed.
FUZZTIME ?= 30s
FUZZ_TARGETS := vision:FuzzReadHandInfo vision:FuzzReadManifest vision:FuzzPreprocess \
	handnet/model:FuzzReadSafetensors weights:FuzzReadPyTorch handnet:FuzzHandler
fuzz: setup fixtures
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "== $$fn (./$$pkg, $(FUZZTIME))"; \
	  out=$$($(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$pkg 2>&1); st=$$?; \
	  echo "$$out" | grep -v '^fuzz: elapsed'; echo "$$out" | grep '^fuzz: elapsed' | tail -n 2 | head -n 1; \
	  [ $$st = 0 ] || exit 1; \
	done

# curl and jq, which the README's serve step uses (TestREADMECommands runs it).
curl-jq:
	@command -v curl >/dev/null 2>&1 && command -v jq >/dev/null 2>&1 || { \
	  echo "installing curl and jq (Debian) for the README's commands"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl jq >/dev/null; \
	  else echo "run: sudo apt-get install curl jq" >&2; exit 1; fi; }

# Debian's chromium, for the web page's test in a real browser (chromedp).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian) for the web page's browser test"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "run: sudo apt-get install chromium" >&2; exit 1; fi; }

# Debian's torchrun (python3-torch), for the tests that launch handnet with
# the real launcher (elastic restarts included).
torchrun:
	@/usr/bin/python3 -c 'import torch.distributed.run' 2>/dev/null || { \
	  echo "installing python3-torch (Debian) for the torchrun tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch >/dev/null; \
	  else echo "run: sudo apt-get install python3-torch" >&2; exit 1; fi; }

# Golden fixtures for the parity tests, made by PyTorch itself (Debian's
# python3-torch and python3-torchvision, installed when missing): the
# weights and logits of torchvision's resnet18() and of the study's CNN.
FIXTURES := testdata/fixtures
fixtures: $(FIXTURES)/.done
$(FIXTURES)/.done: tools/fixtures/golden.py handnet/bench/pytorch_bench.py
	@/usr/bin/python3 -c 'import torchvision' 2>/dev/null || { \
	  echo "installing python3-torchvision (Debian) for the golden fixtures"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torchvision >/dev/null; \
	  else echo "run: sudo apt-get install python3-torchvision" >&2; exit 1; fi; }
	/usr/bin/python3 tools/fixtures/golden.py $(FIXTURES)
	@touch $@

# The container image (Containerfile): Debian bookworm-slim, the libraries
# bin/handnet loads, the binary, a non-root user. CONTAINER: podman when
# installed, else docker when its daemon answers, else podman (which
# container-tools installs). IMAGE defaults to handnet:VERSION (from
# `handnet version --short`, '+' written '-' as tags allow).
.PHONY: image image-base container-tools
ifeq ($(origin CONTAINER),undefined)
CONTAINER := $(shell if command -v podman >/dev/null 2>&1; then echo podman; \
  elif command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then echo docker; else echo podman; fi)
endif
BASE_IMAGE ?= docker.io/library/debian:bookworm-slim
IMAGE ?=
# chroot isolation: works rootful and rootless, and on hosts where podman's
# default OCI runtime cannot run build steps.
CONTAINER_BUILD_FLAGS ?= $(if $(filter podman,$(notdir $(CONTAINER))),--isolation chroot,)
image: build
	@v=$$($(BIN) version --short 2>/dev/null || git describe --always --dirty 2>/dev/null || echo unknown); \
	rev=$$(git rev-parse HEAD 2>/dev/null || echo unknown); \
	tag='$(IMAGE)'; [ -n "$$tag" ] || tag=handnet:$$(printf %s "$$v" | tr -c 'A-Za-z0-9_.-' '-'); \
	echo "$(CONTAINER) build $$tag (handnet $$v, FROM $(BASE_IMAGE))"; \
	$(CONTAINER) build $(CONTAINER_BUILD_FLAGS) --build-arg BASE=$(BASE_IMAGE) --build-arg VERSION="$$v" \
	  --build-arg REVISION="$$rev" -t "$$tag" -f Containerfile . || exit 1; \
	size=$$($(CONTAINER) image inspect --format '{{.Size}}' "$$tag") && \
	echo "image $$tag: $$((size / 1000000)) MB ($(CONTAINER) image inspect --format '{{.Size}}' $$tag)"

# Where no registry is reachable: make BASE_IMAGE locally from Debian's
# archive (mmdebstrap, minbase, without docs like the -slim images) and
# import it under that name, so FROM resolves without a pull. Kept in the
# container storage: a second run does nothing.
image-base: container-tools
	@$(CONTAINER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || { \
	  echo "making $(BASE_IMAGE) locally (mmdebstrap bookworm, then $(CONTAINER) import)"; \
	  t=$$(mktemp -d) && trap 'rm -rf "$$t"' EXIT && \
	  mmdebstrap --variant=minbase --quiet --dpkgopt='path-exclude=/usr/share/man/*' \
	    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	    bookworm "$$t/base.tar" && \
	  $(CONTAINER) import "$$t/base.tar" $(BASE_IMAGE) >/dev/null; }

# Debian's podman, runc (crun cannot start containers on every host) and
# mmdebstrap, for the image's tests.
container-tools:
	@command -v $(CONTAINER) >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 || { \
	  echo "installing podman, runc and mmdebstrap (Debian) for the container image's tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc mmdebstrap >/dev/null; \
	  else echo "run: sudo apt-get install podman runc mmdebstrap" >&2; exit 1; fi; }

# The main job: check torch, then the end-to-end demo on synthetic hands
# (report and plots in runs/demo/).
run: build
	$(BIN) doctor
	$(BIN) demo --out runs/demo

clean:
	rm -rf bin .build go.work go.work.sum $(FIXTURES) handnet/runtime/native/flags.go
