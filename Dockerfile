# The mock-accel-dra binary and the node agent alone (mock-accel-node-agent, smaller, for the
# DaemonSet) in a small image. Build with `make build-image` (docker, podman or buildah). The
# controller runs as the image's non-root user; the node-agent DaemonSet runs the same image as
# root because it writes sysfs (see config/node-agent.yaml).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The gRPC protos compile with protox at build time, so no system protoc is needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mock-accel-dra --bin mock-accel-node-agent \
    && install -D -m 0755 target/release/mock-accel-dra /out/mock-accel-dra \
    && install -D -m 0755 target/release/mock-accel-node-agent /out/mock-accel-node-agent

# glibc and libgcc (the binary links them dynamically), CA certificates, user 65532 "nonroot".
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mock-accel-dra /usr/local/bin/mock-accel-dra
COPY --from=build /out/mock-accel-node-agent /usr/local/bin/mock-accel-node-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mock-accel-dra"]
