# vm-provider: `make run` serves on libvirt's test hypervisor; `make test`
# runs the whole suite (it installs and starts everything it needs: Debian
# packages, the test guest and the test bed's own libvirtd, never the
# machine's qemu:///system; see testbed/README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PKGS   := -e '.[dev]' -e backends/libvirt -e backends/proxmox -e examples/sim -e tests/plugins -e tests/conformance/broken_backends
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup run test test-fast image lint typecheck proto proto-check check testbed testbed-stop testbed-purge bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard backends/*/pyproject.toml examples/*/pyproject.toml) tests/plugins/pyproject.toml tests/conformance/broken_backends/pyproject.toml
	bash tools/bootstrap.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PKGS)
	touch $@

run: setup
	$(BIN)/vm-provider --backend libvirt $(ARGS)

testbed: setup
	bash testbed/install.sh
	bash testbed/build-guest.sh >/dev/null
	bash testbed/libvirtd.sh start
	bash testbed/postgres.sh start

# Stops the test bed's own daemons and guests (not the machine's).
testbed-stop:
	bash testbed/libvirtd.sh stop
	bash testbed/postgres.sh stop

# ... and deletes everything it kept (its pool, domains, logs).
testbed-purge:
	bash testbed/libvirtd.sh purge
	bash testbed/postgres.sh purge

# The container image tests/test_image.py runs (podman, runc and debootstrap
# installed; the base made from Debian's packages when no registry answers).
image:
	bash tools/build-image.sh --setup-host --local-base

# The real-daemon tests read the test bed daemon's URI from VMP_LIBVIRTD_URI
# and the test bed PostgreSQL's URL from VMP_POSTGRES_URL;
# the image tests fail, rather than skip, without the image.
test: testbed image
	VMP_LIBVIRTD_URI="$$(bash testbed/libvirtd.sh uri)" VMP_POSTGRES_URL="$$(bash testbed/postgres.sh url)" VMP_REQUIRE_TESTBED=1 $(BIN)/pytest $(ARGS)

# The suite without the real libvirt daemon (its tests skip, saying why).
test-fast: setup
	VMP_NO_LIBVIRTD=1 VMP_REQUIRE_TESTBED=0 $(BIN)/pytest $(ARGS)

proto: setup
	$(BIN)/python tools/gen_proto.py

proto-check: setup
	$(BIN)/python tools/gen_proto.py --check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy provider_core
	$(BIN)/mypy backends/libvirt/vm_provider_libvirt backends/proxmox/vm_provider_proxmox examples/sim/vm_provider_sim

check: proto-check lint typecheck

bench: setup
	$(BIN)/python bench/describe_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
