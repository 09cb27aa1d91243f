# kubeipvs.node — developer entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/.build
# Ansible finds the collection through this tree (a symlink back to the checkout).
COLLECTIONS := $(BUILD)/collections
# ansible-test needs a real ansible_collections/<ns>/<name> directory, so sanity runs on a copy.
SANITY_TREE := $(BUILD)/sanity/ansible_collections/kubeipvs/node
# ansible-test pins its own linters: they live in a virtualenv of their own.
SANITY_VENV := $(CURDIR)/.venv-sanity
ANSIBLE_CORE := $(shell grep -E '^ansible-core==' tests/requirements.txt)
LAB := $(PYTHON) tests/lab/lab.py
CLUSTER := $(PYTHON) tests/lab/cluster.py
NODES ?= 1
APT_PACKAGES := qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client rsync git \
	python3-venv shellcheck iproute2 ipset iptables nftables conntrack vde2 openssl

export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_HOST_KEY_CHECKING := False
export ANSIBLE_PIPELINING := True
export ANSIBLE_FORCE_COLOR := False
export ANSIBLE_NOCOLOR := True
export PY_COLORS := 0

.PHONY: help setup apt venv collection k8s lab-build test unit pytest sanity lint docs-check molecule build-collection bench-switch bench-fleet \
	lab-up lab-down lab-ssh lab-status demo bench-ipvs clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: apt venv collection ## install apt packages and the pinned Python toolchain (.venv)

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

$(SANITY_VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(SANITY_VENV)
	$(SANITY_VENV)/bin/pip install --quiet --disable-pip-version-check '$(ANSIBLE_CORE)'
	@# ansible-test bootstraps pip in its per-test venvs with a script it downloads from a host
	@# outside the package index; put an offline one (ensurepip + the index) where it caches it.
	@version=$$(grep -ohE "pip='[0-9.]+'" $(SANITY_VENV)/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py \
		| head -n 1 | tr -dc '0-9.'); \
	mkdir -p $(HOME)/.ansible/test/cache && \
	cp tests/sanity/bootstrap_pip.py $(HOME)/.ansible/test/cache/get_pip_$${version//./_}.py
	touch $@

# Kubernetes' programs are built from their Go modules: say so before anything starts without Go.
NEED_GO = @command -v go >/dev/null || { echo "$@: Go is needed to build Kubernetes (see README)"; exit 1; }

k8s: ## build the pinned Kubernetes programs (KUBEIPVS_K8S_VERSION) from their Go modules, once per machine
	$(NEED_GO)
	$(CLUSTER) build

# The guest image and the Kubernetes programs, each cached, side by side: the image mostly waits on
# the package archive, the programs on the CPU (a cold machine saves the image's few minutes).
lab-build: setup
	$(NEED_GO)
	@mkdir -p $(BUILD); status=0; \
	$(LAB) build >$(BUILD)/lab-build.log 2>&1 & image=$$!; \
	$(CLUSTER) build || status=$$?; \
	wait $$image || status=$$?; cat $(BUILD)/lab-build.log; exit $$status

collection: ## link the checkout into .build/collections so Ansible resolves kubeipvs.node.*
	@mkdir -p $(COLLECTIONS)/ansible_collections/kubeipvs
	@ln -sfn $(CURDIR) $(COLLECTIONS)/ansible_collections/kubeipvs/node

# The host-only checks (sanity, ansible-lint, the docs and changelog check, pytest) need no VM, so
# they run beside molecule; their output is printed after molecule's, pytest's summary line last.
# Any failure fails the run.
test: setup ## everything: molecule on lab VMs, beside it sanity, ansible-lint, docs-check and pytest (its summary closes the run)
	@mkdir -p $(BUILD) && rm -f $(BUILD)/molecule.log
	@( status=0; \
	  $(MAKE) --no-print-directory sanity lint docs-check >$(BUILD)/static-checks.log 2>&1 || status=1; \
	  $(MAKE) --no-print-directory pytest >$(BUILD)/pytest.log 2>&1 || status=1; \
	  echo $$status >$(BUILD)/host-checks.status ) & \
	host_checks=$$!; molecule=0; \
	$(MAKE) --no-print-directory molecule || molecule=1; \
	wait $$host_checks; \
	echo "=== sanity, ansible-lint and docs-check"; cat $(BUILD)/static-checks.log; \
	echo "=== molecule: $$([ $$molecule = 0 ] && echo passed || echo FAILED, see above)"; \
	echo "=== pytest"; head -n -1 $(BUILD)/pytest.log; \
	if [ $$molecule != 0 ]; then \
		echo "=== molecule FAILED: the failed steps and tasks (the whole output is above and in .build/molecule.log)"; \
		awk -f tests/molecule-failures.awk $(BUILD)/molecule.log 2>/dev/null | tail -n 24 \
			|| echo "(no .build/molecule.log: molecule stopped before its scenarios)"; \
	fi; \
	[ "$$(cat $(BUILD)/host-checks.status)" = 0 ] || echo "=== sanity, ansible-lint, docs-check or pytest FAILED, see above"; \
	tail -n 1 $(BUILD)/pytest.log; \
	[ $$molecule = 0 ] && [ "$$(cat $(BUILD)/host-checks.status)" = 0 ]

unit: setup ## unit tests only (pure diff logic, fakes; seconds)
	PYTHONPATH=$(COLLECTIONS) $(BIN)/pytest tests/unit -p no:cacheprovider

pytest: setup k8s ## unit tests and host-kernel integration tests (network namespaces, a real Kubernetes cluster, galaxy build); the 20 slowest listed
	PYTHONPATH=$(COLLECTIONS) $(BIN)/pytest tests/unit tests/integration -p no:cacheprovider --durations=20

sanity: setup $(SANITY_VENV)/.installed ## ansible-test sanity on an assembled ansible_collections tree
	@rm -rf $(SANITY_TREE) && mkdir -p $(SANITY_TREE)
	@git ls-files --cached --others --exclude-standard | rsync -a --files-from=- ./ $(SANITY_TREE)/
	@# ansible-test lists files with git; without an index of its own it would ask the checkout's.
	@cd $(SANITY_TREE) && git init -q && git add -A
	cd $(SANITY_TREE) && $(SANITY_VENV)/bin/ansible-test sanity --local --requirements --python 3.11 --color no

lint: setup ## ansible-lint, production profile
	$(BIN)/ansible-lint --profile production --offline

# The changelog is built on a copy: a release consumes the fragments, which the checkout keeps.
CHANGELOG_TREE := $(BUILD)/changelog/ansible_collections/kubeipvs/node
docs-check: setup collection ## antsibull-docs lint-collection-docs (plugin docs too), and the changelog built with antsibull-changelog
	$(BIN)/antsibull-docs lint-collection-docs --plugin-docs $(COLLECTIONS)/ansible_collections/kubeipvs/node
	$(BIN)/antsibull-changelog lint
	@rm -rf $(CHANGELOG_TREE) && mkdir -p $(CHANGELOG_TREE)
	@git ls-files --cached --others --exclude-standard | rsync -a --files-from=- ./ $(CHANGELOG_TREE)/
	cd $(CHANGELOG_TREE) && ANSIBLE_COLLECTIONS_PATH=$(BUILD)/changelog $(BIN)/antsibull-changelog release \
		--version "$$(awk '$$1 == "version:" { print $$2 }' galaxy.yml)"
	@test -s $(CHANGELOG_TREE)/CHANGELOG.rst && echo "docs-check: the changelog builds ($(CHANGELOG_TREE)/CHANGELOG.rst)"

molecule: setup lab-build ## every molecule scenario on lab VMs (SCENARIO=name for one; boots and stops the lab)
	@# Molecule's state of this checkout, fresh each run: its default place is keyed by the
	@# directory's name only, so an interrupted run (or another checkout of the same name) would
	@# leave the scenarios believing the lab was created and prepared.
	rm -rf $(BUILD)/molecule && mkdir -p $(BUILD)
	@# Each step's, play's and task's start time before its line: where a run's time goes, and
	@# what ran when a canary or a node reports a time. Kept in .build/molecule.log too, for
	@# `make test`'s closing lines.
	KUBEIPVS_LAB_ZIPCACHE=1 KUBEIPVS_LAB_MODSERVER=$(BIN)/python PYTHONUNBUFFERED=1 MOLECULE_EPHEMERAL_DIRECTORY=$(BUILD)/molecule $(BIN)/molecule test $(if $(SCENARIO),--scenario-name $(SCENARIO),--all) 2>&1 \
		| while IFS= read -r line; do case $$line in INFO*|'TASK ['*|'PLAY ['*|'RUNNING HANDLER ['*) \
			printf '%(%H:%M:%S)T ' -1;; esac; printf '%s\n' "$$line"; done \
		| tee $(BUILD)/molecule.log \
		|| { $(CLUSTER) down; $(LAB) down; exit 1; }

build-collection: setup ## ansible-galaxy collection build into .build/
	$(BIN)/ansible-galaxy collection build --force --output-path $(BUILD) .

lab-up: setup k8s ## boot the lab (NODES=n, default 1), start its control plane, make every VM a Node
	$(LAB) up --nodes $(NODES)
	$(CLUSTER) up
	$(CLUSTER) join

lab-down: ## stop the control plane and every lab VM by their PIDs
	$(CLUSTER) down
	$(LAB) down

lab-ssh: ## root shell on a lab node (NODE=node1)
	$(LAB) ssh $(or $(NODE),node1)

lab-status: ## which lab VMs and control plane processes run
	$(LAB) status
	$(CLUSTER) status

DEMO_NODES ?= 2
demo: setup k8s ## the main job on the lab cluster: site.yml to IPVS mode, traffic, then a switch to nftables
	$(LAB) up --nodes $(DEMO_NODES)
	$(CLUSTER) up
	$(CLUSTER) join
	$(BIN)/ansible-playbook -i .lab/inventory.yml tests/lab/demo/site.yml -e @tests/lab/demo/vars.yml \
		-e kube_proxy_kubeconfig=$(CURDIR)/.lab/k8s/admin.kubeconfig -e lab_demo_state=$(CURDIR)/.lab
	@echo "demo: the lab is still up; 'make lab-ssh' to look around, 'make lab-down' to stop it"

BENCH_SWITCH_ARGS ?= --services 2000 --endpoints 5
bench-switch: setup k8s ## the rolling switch at scale on a 3-node lab (BENCH_SWITCH_ARGS=...): ipvs -> nftables -> ipvs, ~40 min
	$(LAB) up --nodes 3
	$(CLUSTER) up
	$(CLUSTER) join
	@mkdir -p $(BUILD)
	$(BIN)/python bench/switch_bench.py $(BENCH_SWITCH_ARGS) | tee $(BUILD)/switch-bench.json \
		&& status=0 || status=$$?; $(CLUSTER) down; $(LAB) down; exit $$status

bench-fleet: setup k8s ## the controller's cost of 100 nodes of a 20,000-Service cluster (BENCH_FLEET_ARGS=...), ~20 min
	$(BIN)/python bench/fleet_bench.py $(BENCH_FLEET_ARGS)

# The IPVS benchmark needs a kernel with IPVS: it runs in a lab VM of its own (more memory than the
# test lab, so 50k services fit), with the collection and pyroute2 (its naive reference) copied in.
BENCH_LAB := KUBEIPVS_LAB_STATE=$(CURDIR)/.lab-bench KUBEIPVS_LAB_MEMORY=4096 $(LAB)
BENCH_ARGS ?= --services 10000 --dests 10 --rounds 3
bench-ipvs: setup ## IPVS benchmark against ipvsadm in a lab VM (BENCH_ARGS=...); prints ratios, ~25 min
	$(BENCH_LAB) up --nodes 1
	tar -cf - plugins bench | $(BENCH_LAB) ssh node1 'rm -rf /root/bench && \
		mkdir -p /root/bench/ansible_collections/kubeipvs/node && tar -xf - -C /root/bench/ansible_collections/kubeipvs/node'
	tar -cf - -C "$$($(LAB) wheels)" . | $(BENCH_LAB) ssh node1 'mkdir -p /root/bench/wheels && \
		tar -xf - -C /root/bench/wheels && for wheel in /root/bench/wheels/*.whl; do python3 -m zipfile -e "$$wheel" /root/bench; done'
	@# the module runs with a real AnsibleModule, as Ansible would ship it
	tar -cf - -C "$$($(BIN)/python -c 'import ansible, os; print(os.path.dirname(os.path.dirname(ansible.__file__)))')" \
		ansible | $(BENCH_LAB) ssh node1 'tar -xf - -C /root/bench'
	@mkdir -p $(BUILD)
	$(BENCH_LAB) ssh node1 'cd /root/bench/ansible_collections/kubeipvs/node && \
		PYTHONPATH=/root/bench python3 bench/ipvs_bench.py $(BENCH_ARGS)' | tee $(BUILD)/ipvs-bench.json \
		&& status=0 || status=$$?; $(BENCH_LAB) down; exit $$status

clean: lab-down ## remove build trees (the image cache stays)
	rm -rf $(BUILD)
