"""Values shared by several built-in profiles, with the reason they are shared."""

from __future__ import annotations

# The H100 capture's driver: the current R580 datacenter release. Profiles without their own
# capture use it too, so a mixed cluster shows one driver, as a real fleet usually does.
DRIVER_VERSION = "580.159.04"
CUDA_VERSION = "13.0"
DRIVER_SOURCE = (
    "estimate: same R580 datacenter release as the H100 capture "
    "(../shared/reference/nvidia-smi-h100, 580.159.04 / CUDA 13.0)"
)
