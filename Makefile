# handnet — two commands do everything on a fresh machine:
#   make run    set up libtorch + gotch, build, then run the demo
#   make test   set up, then run every test
GO      ?= go
BIN     := bin/handnet
# Timeout for the whole test run; the cold libtch compile is not part of it.
TESTFLAGS ?= -timeout 30m

.PHONY: all setup build install test run clean fixtures fuzz browser

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

test: setup fixtures browser torchrun
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
$(FIXTURES)/.done: tools/fixtures/golden.py
	@/usr/bin/python3 -c 'import torchvision' 2>/dev/null || { \
	  echo "installing python3-torchvision (Debian) for the golden fixtures"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torchvision >/dev/null; \
	  else echo "run: sudo apt-get install python3-torchvision" >&2; exit 1; fi; }
	/usr/bin/python3 tools/fixtures/golden.py $(FIXTURES)
	@touch $@

# The main job: check torch, then the end-to-end demo on synthetic hands
# (report and plots in runs/demo/).
run: build
	$(BIN) doctor
	$(BIN) demo --out runs/demo

clean:
	rm -rf bin .build go.work go.work.sum $(FIXTURES) handnet/native/flags.go
