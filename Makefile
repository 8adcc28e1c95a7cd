# handnet — two commands do everything on a fresh machine:
#   make run    set up libtorch + gotch, build, then run the demo
#   make test   set up, then run every test
GO      ?= go
BIN     := bin/handnet
# Timeout for the whole test run; the cold libtch compile is not part of it.
TESTFLAGS ?= -timeout 30m

.PHONY: all setup build test run clean

all: build

# Finds libtorch (LIBTORCH=/dir, LIBTORCH_USE_PYTORCH=1, or Debian's
# libtorch-dev, installed when missing), prepares gotch for it in .build/ and
# writes go.work. Cached: a second run takes well under a second.
setup:
	GOWORK=off $(GO) run ./tools/setup

build: setup
	$(GO) build -o $(BIN) ./handnet/cmd/handnet

test: setup
	$(GO) test $(TESTFLAGS) ./...

# The main job: check torch, then the end-to-end demo on synthetic hands
# (report and plots in runs/demo/).
run: build
	$(BIN) doctor
	$(BIN) demo --out runs/demo

clean:
	rm -rf bin .build go.work go.work.sum
