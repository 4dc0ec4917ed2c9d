# hero_executor — the targets CI and the README use.
CARGO ?= cargo
ARGS ?=

.PHONY: run echo build test lint fmt clean

## run: build and run the daemon in the foreground with embedded defaults (ARGS="..." for flags)
run:
	$(CARGO) run --release --bin hero_executor -- $(ARGS)

## echo: build and run the example service (a hero_* service to call through the executor)
echo:
	$(CARGO) run --release --example echo_service -- $(ARGS)

## build: release build of the daemon and the examples
build:
	$(CARGO) build --release --bins --examples

## test: the whole test suite (unit, integration with real daemon and services, doc tests)
test:
	$(CARGO) build --examples
	$(CARGO) test

## lint: formatting and clippy, exactly as CI runs them
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
