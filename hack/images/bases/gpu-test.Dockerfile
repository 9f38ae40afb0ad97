# The image of the test GPU pods on the real node: Debian 12 with a shell and coreutils and no
# Python, so the nvidia-smi they run is the mounted standalone bundle, as in users' images.
ARG DEBIAN_IMAGE=localhost/fgo/debian:bookworm
FROM ${DEBIAN_IMAGE}
CMD ["sleep", "infinity"]
