# edgepass in a scratch image: the static musl binary and the CA roots, nothing else.
#
# Build the binary first (no compiler runs inside the image build):
#   cross/build.sh x86_64-unknown-linux-musl          # or aarch64-..., armv7-...
#   docker build --build-arg TARGET=x86_64-unknown-linux-musl -t edgepass .
# Without Docker, cross/oci-image.sh writes the same image as an OCI layout.
#
# Run (the URL is the only argument; see config-examples/docker-compose.yml):
#   docker run -d --name edgepass-server -p 10101:10101 -p 8080:8080 edgepass \
#     'server://CHANGE-ME-long-random-key@0.0.0.0:10101/0.0.0.0:8080?tls=1'
#   docker run -d --name edgepass-client --network host edgepass \
#     'client://CHANGE-ME-long-random-key@vps.example.com:10101/127.0.0.1:80'
#   docker run -d --name edgepass-relay -p 4001:4001 edgepass \
#     'relay://CHANGE-ME-relay-key@0.0.0.0:4001?tls=1&max-reservations=128'

# Only a source of the CA bundle; nothing from this stage but that one file is kept.
FROM debian:bookworm-slim AS ca
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM scratch
ARG TARGET=x86_64-unknown-linux-musl
# For tls=2 clients of a server whose certificate a public CA signed:
#   client://...?ca=/etc/ssl/certs/ca-certificates.crt
COPY --from=ca /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY dist/${TARGET}/edgepass /edgepass
USER 65534:65534
ENTRYPOINT ["/edgepass"]
CMD ["--help"]
