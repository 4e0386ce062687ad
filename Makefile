# cocoon — build, run and test. `make run` and `make test` work on a fresh machine
# with Go 1.26, make and npm: everything else is installed by the targets below.

GO        ?= go
BIN       := bin/cocoon
CACHE     := $(CURDIR)/.cache
# The embedded llama.cpp runtime's shared libraries (installed from npm by scripts/llama-libs.sh).
export COCOON_LLAMA_LIB ?= $(CACHE)/llama/lib
# The small real model used by tests and the demo (see ../shared/models/MODELS.md).
export COCOON_TEST_MODEL ?= $(abspath $(CURDIR)/../shared/models/stories260K.gguf)

.PHONY: build run test bench fuzz lint deps

build:
	$(GO) build -o $(BIN) ./cmd/cocoon

deps:
	@sh scripts/llama-libs.sh $(CACHE)/llama

run: build deps
	./$(BIN) node

test: deps
	$(GO) vet ./...
	$(GO) test -count=1 ./...

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

fuzz:

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
