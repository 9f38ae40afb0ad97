"""Built-in GPU profile data, one module per GPU architecture.

Every value carries a source in the profile's ``sources`` map: a public datasheet or whitepaper,
the real H100 capture in ``../shared/reference/nvidia-smi-h100``, or ``estimate: <reason>``.
"""
