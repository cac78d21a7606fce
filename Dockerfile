# One multi-stage Dockerfile for the three services and the sagabox CLI:
#   docker build --build-arg SERVICE=orderservice -t sagabox/orderservice .
#   docker build --build-arg SERVICE=sagabox --build-arg PKG=./cmd/sagabox -t sagabox/sagabox .
# The build stage compiles a static binary; the runtime stage is a small
# Alpine image running as an unprivileged user, uid 10001 (wget is there for
# the health check). Alpine 3.23 is supported until November 2027
# (https://alpinelinux.org/releases/); move to the next release before then.
# Secrets mounted by docker compose must be readable by uid 10001: see
# deploy/secrets/README.md.
FROM golang:1.26-trixie AS build
ARG SERVICE
# PKG defaults to the service's main package.
ARG PKG
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN test -n "$SERVICE" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/service "${PKG:-./${SERVICE}/cmd/${SERVICE}}"

FROM alpine:3.23
RUN adduser -D -H -u 10001 sagabox
COPY --from=build /out/service /usr/local/bin/service
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/service"]
