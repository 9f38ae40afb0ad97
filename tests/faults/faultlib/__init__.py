"""Helpers of the fault suite: the world it runs in, a test kubelet, churn load, a TCP proxy."""
