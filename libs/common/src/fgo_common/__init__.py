"""Shared vocabulary of the fake GPU operator.

Every service derives what it shows from the per-node topology record (written only by the
status-updater) plus the built-in GPU profile data; both live here so there is exactly one
definition of each GPU fact.
"""
