"""Service runtime: logging, settings, task supervision, health and metrics endpoints."""
