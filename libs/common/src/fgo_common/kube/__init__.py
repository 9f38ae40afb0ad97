"""Kubernetes helpers every service uses: client, list-then-watch, retries, patches."""
