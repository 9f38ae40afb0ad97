"""A drop-in fake nvidia-smi for GPU pods, faithful to the real tool."""
