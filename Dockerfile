# One multi-stage Dockerfile for the three services and the sagabox CLI:
#   docker build --build-arg SERVICE=orderservice -t sagabox/orderservice .
#   docker build --build-arg SERVICE=sagabox --build-arg PKG=./cmd/sagabox -t sagabox/sagabox .
# The build stage compiles a static binary; the runtime stage is a small
# Alpine image running as an unprivileged user (wget is there for the health
# check).
FROM golang:1.26-bookworm AS build
ARG SERVICE
# PKG defaults to the service's main package.
ARG PKG
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN test -n "$SERVICE" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/service "${PKG:-./${SERVICE}/cmd/${SERVICE}}"

FROM alpine:3.20
RUN adduser -D -H -u 10001 sagabox
COPY --from=build /out/service /usr/local/bin/service
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/service"]
