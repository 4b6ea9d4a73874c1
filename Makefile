# mock-accel DRA driver: build, test and run targets. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
export K8S_VERSION ?= v1.37.2

# The image name and tag are set in one place, the `images:` entry of the kustomization that
# `make deploy` applies; build-image, save-image and load-image read them from there.
KUSTOMIZATION := kustomize/default/kustomization.yaml
IMAGE := $(shell sed -n 's/^ *newName: *//p' $(KUSTOMIZATION)):$(shell sed -n 's/^ *newTag: *//p' $(KUSTOMIZATION))
IMAGE_TAR ?= /tmp/mock-accel-dra-image.tar

.PHONY: help bin build test fuzz lint fmt fmt-check crd bench bench-peer bench-scale image-name build-image save-image load-image \
        deploy undeploy k8s-bins e2e e2e-node fakelet-test harness-test dev-cluster dev-cluster-env dev-cluster-down demo

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

build: ## build the mock-accel-dra and mock-accel-node-agent binaries (release)
	$(CARGO) build --release --locked

test: fmt-check lint ## formatting, clippy, then every unit and in-process test
	$(CARGO) test --locked --all-targets

# The property tests of src/properties.rs run in `make test` with a fixed number of cases;
# here each gets an equal share of FUZZ_SECONDS and prints how many cases it tried.
FUZZ_SECONDS ?= 600
fuzz: ## property tests of every parser of outside input for FUZZ_SECONDS (default 600), with case counts
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --locked --lib properties:: -- --test-threads=1 --nocapture

lint: ## clippy with warnings as errors
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

fmt-check: ## check the formatting without changing files (part of `make test`)
	$(CARGO) fmt --all -- --check

# Tests, e2e and tools use the binary of the `--all-targets` build: a plain `cargo build` resolves
# other dependency features (dev-dependencies unify them) and would rebuild the whole tree.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/debug/mock-accel-dra

bin: ## build the debug binary used by tests, e2e and the demo
	$(CARGO) build --locked --all-targets

crd: bin ## regenerate crds/ from the Rust types
	$(BIN) crd > crds/mockaccelnodes.mock-accel.example.com.yaml

# The bench profile (release settings, see Cargo.toml) builds the benches and the binary that
# agent_memory starts. --bench '*' runs only the benches: a plain `cargo bench` also builds the
# unit tests in that profile and lists each as ignored.
bench: ## benchmarks, optimised build: discovery, prepare/unprepare latency, agent memory (also: bench-peer, bench-scale)
	$(CARGO) bench --locked --bench '*'
	@echo "make bench: done. Beside a peer on a local control plane: make bench-peer; the controller at 100 to 3,000 simulated nodes: make bench-scale (about 45 min) (BENCHMARKS.md)"

# The peer comparison needs a control plane and two Go builds, so it is a target of its own.
# It runs the binaries the benches start (same profile, target/release), copied into
# .bench-peer/: the node agent from mock-accel-node-agent, the simulated tree from mock-accel-dra.
bench-peer: ## our kubelet plugin against the Kubernetes DRA test driver, on a local control plane (~5 min warm)
	$(CARGO) bench --locked --no-run --bench agent_memory
	@$(HARNESS) bench/peer/run.py --ours $(TARGET_DIR)/release/mock-accel-dra $(BENCH_PEER_ARGS)

# Not part of `make bench` (it needs the local control plane and most of an hour): the
# controller against `mock-accel-dra fleet` nodes, release build. SCALE_ARGS="--runs 100x6
# --steady 60" for a short pass. Results: docs/bench/scale.{json,svg,md}, see BENCHMARKS.md.
SCALE_ARGS ?=
bench-scale: ## controller at 100/1,000/3,000 fleet nodes on the local control plane: publish time, API load, RSS, SVG
	MOCK_ACCEL_PROFILE=release $(HARNESS) benches/scale/run.py $(SCALE_ARGS)

image-name: ## print the image name and tag (from kustomize/default/kustomization.yaml)
	@echo $(IMAGE)

# docker only when its daemon answers; podman and buildah need none.
build-image: ## build the container image with docker, podman or buildah
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then set -x; docker build -t $(IMAGE) .; \
	elif command -v podman >/dev/null 2>&1; then set -x; podman build -t $(IMAGE) .; \
	elif command -v buildah >/dev/null 2>&1; then set -x; buildah bud -t $(IMAGE) .; \
	else echo "build-image: no working docker, podman or buildah found; install one of them (e.g. apt-get install podman)" >&2; exit 1; fi

save-image: ## write the built image to a tar file (IMAGE_TAR, default /tmp/mock-accel-dra-image.tar)
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then set -x; docker save -o $(IMAGE_TAR) $(IMAGE); \
	elif command -v podman >/dev/null 2>&1; then set -x; podman save --format docker-archive -o $(IMAGE_TAR) $(IMAGE); \
	elif command -v buildah >/dev/null 2>&1; then set -x; buildah push $(IMAGE) docker-archive:$(IMAGE_TAR):$(IMAGE); \
	else echo "save-image: no working docker, podman or buildah found to export $(IMAGE); build it first (make build-image)" >&2; exit 1; fi

load-image: save-image ## import the image into this k3s node's containerd (other nodes: see README)
	@command -v k3s >/dev/null 2>&1 || { echo "load-image: k3s not found on this machine; copy $(IMAGE_TAR) to each node and import it there (README, \"Install into a cluster\")" >&2; exit 1; }
	sudo k3s ctr images import $(IMAGE_TAR)

deploy: ## install the driver into the current kubectl context
	kubectl apply -k kustomize/default

undeploy: ## remove the driver from the current kubectl context
	kubectl delete -k kustomize/default --ignore-not-found

k8s-bins: ## build (or reuse) the control-plane binaries from the Kubernetes Go modules
	K8S_VERSION=$(K8S_VERSION) e2e/k8sbins/build.sh

# ---- local cluster and end-to-end suite (e2e/harness, e2e/scenarios) ----------------------------
# A real control plane built from the Kubernetes Go modules, simulated nodes (sysfs tree, fake
# kubelet, node agent) and two controller replicas, all as local processes. Python 3 stdlib only.
DEV_CLUSTER ?= .dev-cluster
E2E_ARGS ?=
HARNESS := PYTHONDONTWRITEBYTECODE=1 python3

dev-cluster: ## start the local two-node cluster (state in .dev-cluster/); REAL_NODE=1 adds real1 (real kubelet)
	@$(HARNESS) e2e/harness/cluster.py up --state $(DEV_CLUSTER) $(if $(filter 1,$(REAL_NODE)),--real-node)

dev-cluster-env: ## shell exports for the local cluster: eval "$(make -s dev-cluster-env)"
	@$(HARNESS) e2e/harness/cluster.py env --state $(DEV_CLUSTER)

dev-cluster-down: ## stop the local cluster
	@$(HARNESS) e2e/harness/cluster.py down --state $(DEV_CLUSTER)

demo: ## allocate a PF to a pod on the local cluster and show what it gets (KEEP=1 keeps the cluster)
	@$(HARNESS) e2e/demo.py --state $(DEV_CLUSTER) $(if $(KEEP),--keep)

# Clusters side by side for `make e2e`, each running a share of the scenarios (e2e/harness/shards.py).
E2E_JOBS ?= 2

e2e: fakelet-test harness-test ## every end-to-end scenario on fresh local clusters (E2E_ARGS="-k 3" selects, E2E_JOBS=1 one cluster)
	@$(HARNESS) e2e/run.py --jobs $(E2E_JOBS) $(E2E_ARGS)

harness-test: ## the e2e harness's own tests (no cluster): processes, manifests, sharding
	@$(HARNESS) -m unittest discover -s e2e -p 'test_*.py'

# Not part of `make e2e` nor .ci/run: a real kubelet and containerd (built once, cached), see
# docs/testing-guide.md for how long it takes.
e2e-node: ## scenarios 20* on node real1: a real kubelet v1.37.2 and containerd v2.4.2 (E2E_ARGS as for e2e)
	@$(HARNESS) e2e/run.py --real-node $(E2E_ARGS)

fakelet-test: ## the fake kubelet's own Go tests (registration and pods on the kubelet's DRA code, CDI)
	cd e2e/fakelet && GOTOOLCHAIN=local go test ./...
