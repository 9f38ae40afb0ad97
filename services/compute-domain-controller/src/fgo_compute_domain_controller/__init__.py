"""The compute-domain-controller: ComputeDomains' workload templates and status, and the IMEX
channel ResourceSlices of KWOK nodes."""
