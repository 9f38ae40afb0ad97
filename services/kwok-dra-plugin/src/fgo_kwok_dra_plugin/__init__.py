"""Central controller publishing gpu.nvidia.com ResourceSlices for KWOK nodes."""
