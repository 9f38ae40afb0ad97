# Local stand-in for python:3.11-slim-bookworm, built from Debian's packages on machines that
# cannot pull public images (hack/images/build-bases.sh). Same shape as the public image where
# the service Dockerfiles depend on it: python3 and pip on PATH, pip may install system-wide.
# glibc's iconv modules (gconv, 8 MB) go: Python and the services never use iconv; so does the
# bytecode of pip and setuptools (11 MB), which only the builder stage runs.
ARG DEBIAN_IMAGE=localhost/fgo/debian:bookworm
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
       /usr/share/doc/* /usr/share/man/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
       /usr/lib/x86_64-linux-gnu/gconv \
    && find /usr/lib/python3/dist-packages -name __pycache__ -prune -exec rm -rf {} + \
    && ln -sf /usr/bin/python3.11 /usr/local/bin/python \
    && ln -sf /usr/bin/pip3 /usr/local/bin/pip
# uv reads the system trust store, as Debian's pip does (the service builds mount the host's).
ENV LANG=C.UTF-8 UV_SYSTEM_CERTS=1
CMD ["python3"]
