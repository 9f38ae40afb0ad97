# Local stand-in for the nvidia-smi bundle's build image (ubuntu:22.04 where it can be pulled):
# Debian 12 with Python 3.11 and its shared library (PyInstaller links against libpython), and
# the compiler the service Dockerfiles install anyway, so their apt-get step finds it present.
# The bundle built here needs the glibc of Debian 12 (2.36) at most (docs/nvidia-smi.md).
ARG DEBIAN_IMAGE=localhost/fgo/debian:bookworm
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 libpython3.11 gcc libc6-dev \
       binutils ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
ENV LANG=C.UTF-8 UV_SYSTEM_CERTS=1
