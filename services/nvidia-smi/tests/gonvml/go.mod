module github.com/fake-gpu-operator/fake-gpu-operator/services/nvidia-smi/tests/gonvml

go 1.24

require github.com/NVIDIA/go-nvml v0.13.4-1
