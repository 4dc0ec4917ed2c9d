# hero_executor — the targets CI and the README use.
CARGO ?= cargo
ARGS ?=

.PHONY: run echo petstore build test python-deps bench instructions microbench lint fmt clean

## run: build and run the daemon in the foreground with embedded defaults (ARGS="..." for flags)
run:
	$(CARGO) run --release --bin hero_executor -- $(ARGS)

## echo: build and run the example service (a hero_* service to call through the executor)
echo:
	$(CARGO) run --release --example echo_service -- $(ARGS)

## build: release build of the daemon and the examples
build:
	$(CARGO) build --release --bins --examples

## petstore: the Swagger Petstore document (npm @readme/oas-examples) and a few of its operations on 127.0.0.1:8088 (api_key: demo-key), for the README's Sources tour
PETSTORE_SPEC = target/test-data/oas-examples-8.2.2/package/3.0/yaml/petstore.yaml
petstore: $(PETSTORE_SPEC)
	PETSTORE_KEY=demo-key python3 tests/sources/petstore_server.py $(PETSTORE_SPEC) 8088

$(PETSTORE_SPEC):
	mkdir -p target/test-data/oas-examples-8.2.2
	cd target/test-data/oas-examples-8.2.2 && npm pack --silent @readme/oas-examples@8.2.2 && tar xzf readme-oas-examples-8.2.2.tgz

## test: the whole test suite (unit, integration with real daemon and services, doc tests)
test: python-deps
	$(CARGO) build --examples
	$(CARGO) test

## python-deps: what examples/signed_call.py and the console's browser test need, from PyPI
python-deps:
	python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
		-r examples/requirements.txt -r tests/requirements.txt -r tests/browser/requirements.txt

## bench: load benchmark against a direct call and an nginx/haproxy anchor (apt-get install nginx haproxy); ARGS="--clients 32 --duration 10"
bench:
	$(CARGO) build --release --bins --examples
	$(CARGO) run --release --example bench -- $(ARGS)

## instructions: machine instructions per call (valgrind callgrind), with and without OTLP; ARGS="N1 N2"
instructions:
	$(CARGO) build --release --bins --examples
	examples/instructions/run.sh $(ARGS)

## microbench: criterion micro-benchmarks of the core (signatures, policy, catalog, runs)
microbench:
	$(CARGO) bench --bench core

## lint: formatting and clippy, exactly as CI runs them
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
