# syntax=docker/dockerfile:1
# Static, non-root, distroless-style image of the one gatehouse binary.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/gatehouse ./cmd/gatehouse \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gatehouse /usr/local/bin/gatehouse
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
EXPOSE 5000
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data", "/data"]
