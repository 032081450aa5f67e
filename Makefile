# embark: the two set-up commands (README) and their parts. Everything runs on a fresh machine.
SHELL := /bin/bash
TARGET := x86_64-unknown-linux-gnu
STATIC := target/$(TARGET)/release/embark
VENV := tests/emulator/.venv
PYTHON ?= python3

.PHONY: demo test e2e static dist emulator-env lint lint-shipping clean-env

# The main job: the emulator, a simulated instance in a group, and embark run against it.
demo: emulator-env static
	EMBARK_BIN=$(STATIC) scripts/demo.sh

# Every test: unit and integration tests of the binary, the static-binary proof, the emulator's own.
# The integration tests run the binary that ships (EMBARK_TEST_BIN: the static release build).
# Tests that need root (chown, mount) are #[ignore]d by default; as root they run too (CI is root).
test: emulator-env static
	@export EMBARK_TEST_BIN=$(CURDIR)/$(STATIC); \
	if [ "$$(id -u)" = 0 ]; then set -x; cargo test --locked -- --include-ignored; \
	else echo "not root: the root-only tests are left out (cargo lists them as ignored)"; set -x; cargo test --locked; fi
	cd tests/emulator && .venv/bin/python -m pytest -q

# The end-to-end suite (root; tests/e2e/run.sh): the image baked by packer/install.sh booted under a real
# systemd (systemd-nspawn) and user-data under a real cloud-init, against the emulator, in a network
# namespace of its own. One line per scenario; it says SKIPPED where containers cannot run.
e2e: emulator-env static
	tests/e2e/run.sh

# The portable binary: static-pie on the gnu target, no host libc needed at run time.
# getrandom finds glibc's getrandom() with dlsym, which a static binary cannot do, and then falls back
# to opening /dev/urandom; the cfg makes it call getrandom() directly, so /dev is not needed either.
STATIC_RUSTFLAGS := -C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"
static:
	RUSTFLAGS='$(STATIC_RUSTFLAGS)' cargo build --locked --release --target $(TARGET)
	@ls -l $(STATIC) | awk '{printf "static binary: %s (%.1f MB)\n", $$9, $$5/1048576}'

# What a release publishes: dist/embark-<version>-x86_64.tar.gz and dist/SHA256SUMS.
dist: static
	scripts/dist.sh $(STATIC) dist x86_64

# The emulator's Python environment, from pinned requirements; rebuilt when they change.
emulator-env: $(VENV)/.installed
$(VENV)/.installed: tests/emulator/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/emulator/requirements.txt
	touch $@

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

# What ships around the binary: scripts, cloud-config, Packer template, units, and the IAM policy.
LINTVENV := .ci/.lintvenv
LINT_KMS_KEY := arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab
lint-shipping: static $(LINTVENV)/.installed
	shellcheck userdata/boot.sh packer/install.sh scripts/*.sh bench/*.sh tests/e2e/run.sh .ci/run
	cloud-init schema --config-file userdata/cloud-config.yaml
	packer validate packer/
	@# arm64: the template and its locals (the aarch64 binary is built by the release workflow, not here)
	packer validate -var arch=arm64 -var embark_binary=$(STATIC) packer/
	@# The units name /usr/local/bin/embark and Documentation=man:embark(1); verify copies that name
	@# the binary just built, with its man page generated into a MANPATH of their own.
	tmp=$$(mktemp -d) && mkdir -p "$$tmp/man/man1" && $(STATIC) -q man --dir "$$tmp/man/man1" >/dev/null && \
	    for u in packer/*.service; do \
	    sed "s#/usr/local/bin/embark#$(CURDIR)/$(STATIC)#g" "$$u" >"$$tmp/$$(basename "$$u")"; done && \
	    MANPATH="$$tmp/man" systemd-analyze verify "$$tmp"/*.service; status=$$?; rm -rf "$$tmp"; exit $$status
	$(STATIC) --config .ci/iam-lint.toml iam-policy --group web --kms-key $(LINT_KMS_KEY) | $(LINTVENV)/bin/parliament
	$(STATIC) --config .ci/iam-lint.toml iam-policy --publisher --kms-key $(LINT_KMS_KEY) --sign-key $(LINT_KMS_KEY) | $(LINTVENV)/bin/parliament
	@echo "shipping files: shellcheck, cloud-init schema, packer validate, systemd-analyze verify, parliament: clean"

$(LINTVENV)/.installed: .ci/lint-requirements.txt
	$(PYTHON) -m venv $(LINTVENV)
	$(LINTVENV)/bin/pip install --quiet --disable-pip-version-check -r .ci/lint-requirements.txt
	touch $@

clean-env:
	rm -rf $(VENV)
