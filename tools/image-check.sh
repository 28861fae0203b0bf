#!/usr/bin/env bash
# The built image works: `marketprism --help` runs inside it, and a component started in it (the venue
# simulator, which needs neither Kafka nor ClickHouse) becomes healthy by the image's own HEALTHCHECK.
#   tools/image-check.sh IMAGE
set -euo pipefail
image=${1:?usage: tools/image-check.sh IMAGE}
docker run --rm "$image" --help >/dev/null
name="marketprism-image-check-$$"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$name" --health-interval=2s "$image" simulate >/dev/null
for _ in $(seq 1 90); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$name")
    case "$status" in
        healthy) echo "image check: $image is healthy"; exit 0 ;;
        unhealthy) docker logs "$name" | tail -20; echo "image check: $image is unhealthy"; exit 1 ;;
    esac
    sleep 2
done
docker logs "$name" | tail -20
echo "image check: $image did not become healthy within 180 s"
exit 1
