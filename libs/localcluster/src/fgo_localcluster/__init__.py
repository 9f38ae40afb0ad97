"""Local control plane: etcd, kube-apiserver, scheduler, controller-manager and KWOK on loopback."""
