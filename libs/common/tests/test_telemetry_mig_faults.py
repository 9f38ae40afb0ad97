"""Telemetry model: MIG-aware sampling, faults, profile resolution (status-exporter additions)."""

from __future__ import annotations

from fgo_common.config import load_cluster_config
from fgo_common.identity import mig_uuid
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.telemetry import (
    BUCKET_SECONDS,
    MIG_INSTANCE_OVERHEAD_MIB,
    faults_at,
    profile_for,
    sample_gpu,
    sample_mig_device,
)
from fgo_common.topology import GpuRecord, Holder, MigDevice, PodUsage, UtilizationRange

T0 = 1_780_000_000.0


def _h100() -> GpuRecord:
    config = load_cluster_config("nodePools: {p: {gpus: [{type: H100, count: 1}]}}")
    return build_node_topology("n", config.pools["p"], config, kwok=True).gpus[0]


def _mig_gpu(loads: list[tuple[str, int, int]]) -> GpuRecord:
    """H100 with MIG devices: (profile, utilisation %, fb MiB) each, the loaded ones held."""
    gpu = _h100()
    profile = BUILTIN_CATALOG.get(gpu.profile)
    gpu.mig_enabled = True
    start = 0
    for gi, (name, util, fb) in enumerate(loads, start=1):
        spec = profile.mig_profile(name)
        device = MigDevice(mig_uuid(gpu.id, gi, 0), spec.name, gi, 0, spec.gi_profile_id,
                           spec.ci_profile_id, start, spec.memory_slices, spec.memory_mib,
                           spec.sm_count)  # fmt: skip
        start += spec.memory_slices
        if util or fb:
            uid = f"pod-{gi}"
            device.holders.append(Holder("ns", uid, "c", uid))
            device.usage[uid] = PodUsage(UtilizationRange(util, util), fb, since=T0 - 100)
        gpu.mig_devices.append(device)
    return gpu


def test_mig_parent_is_the_sm_weighted_sum_of_its_instances() -> None:
    gpu = _mig_gpu([("3g.40gb", 100, 1000), ("2g.20gb", 50, 2000), ("1g.10gb", 0, 0)])
    profile = profile_for(gpu)
    parent = sample_gpu(gpu, profile, T0)
    instances = [sample_mig_device(gpu, d, profile, T0) for d in gpu.mig_devices]
    weighted = sum(s.gpu_util * d.sm_count / profile.sm_count
                   for s, d in zip(instances, gpu.mig_devices, strict=True))  # fmt: skip
    assert parent.gpu_util == round(weighted)
    assert parent.fb_used_mib == sum(s.fb_used_mib for s in instances)
    assert [s.fb_used_mib for s in instances] == [
        1000 + MIG_INSTANCE_OVERHEAD_MIB,
        2000 + MIG_INSTANCE_OVERHEAD_MIB,
        MIG_INSTANCE_OVERHEAD_MIB,
    ]
    for s, d in zip(instances, gpu.mig_devices, strict=True):
        assert s.fb_total_mib == d.memory_mib
        assert s.fb_used_mib + s.fb_free_mib == s.fb_total_mib
        # Device-wide readings are the parent's.
        assert (s.power_w, s.gpu_temp_c, s.sm_clock_mhz, s.energy_mj) == (
            parent.power_w, parent.gpu_temp_c, parent.sm_clock_mhz, parent.energy_mj,
        )  # fmt: skip
    assert instances[0].gr_engine_active == 1.0
    assert instances[2].gr_engine_active == 0.0
    assert parent.power_w > sample_gpu(_mig_gpu([("1g.10gb", 0, 0)]), profile, T0).power_w


def test_mig_load_counts_towards_energy() -> None:
    idle = _mig_gpu([("7g.80gb", 0, 0)])
    busy = _mig_gpu([("7g.80gb", 100, 10)])
    profile = profile_for(idle)
    assert sample_gpu(busy, profile, T0).energy_mj > sample_gpu(idle, profile, T0).energy_mj
    energies = [sample_gpu(busy, profile, T0 + i * 3.7).energy_mj for i in range(50)]
    assert energies == sorted(energies)


def test_faults_become_counters() -> None:
    faults = [
        {"kind": "xid", "code": 13, "since": T0 - 100},
        {"kind": "xid", "code": 48, "since": T0 - 10},
        {"kind": "ecc", "sbeVolatile": 2},
        {"kind": "remappedRows", "correctable": 1},
        {"kind": "pcieReplay", "count": 5},
        {"kind": "xid", "code": 79, "since": T0 + 100},  # not yet
        {"kind": "bogus", "code": "x"},
    ]
    state = faults_at(faults, T0)
    assert state.xid_last == 48  # the most recent active one
    assert state.ecc_dbe_volatile == 1  # XID 48 is a double-bit ECC error
    assert state.ecc_sbe_volatile == 2
    assert state.ecc_sbe_aggregate == 2  # aggregate includes volatile
    assert state.remapped_rows_correctable == 1
    assert state.remapped_rows_uncorrectable == 1
    assert state.pcie_replay_count == 5
    assert faults_at(faults, T0 + 200).xid_last == 79
    assert faults_at([{"kind": "xid", "code": 31, "until": T0}], T0).xid_last == 0


def test_throttling_faults_slow_the_gpu() -> None:
    gpu = _h100()
    gpu.status.holders.append(Holder("ns", "p", "c", "u"))
    gpu.status.usage["u"] = PodUsage(UtilizationRange(80, 80), 100, since=T0 - 100)
    profile = profile_for(gpu)
    normal = sample_gpu(gpu, profile, T0)
    gpu.faults = [{"kind": "thermal"}]
    hot = sample_gpu(gpu, profile, T0)
    assert hot.thermal_throttled
    assert hot.gpu_temp_c > profile.temp_slowdown_c
    assert hot.sm_clock_mhz < normal.sm_clock_mhz
    gpu.faults = [{"kind": "power"}]
    braked = sample_gpu(gpu, profile, T0)
    assert braked.power_w <= profile.power_min_limit_w < normal.power_w
    assert braked.sm_clock_mhz < normal.sm_clock_mhz


def test_profile_for_known_custom_and_resized() -> None:
    gpu = _h100()
    assert profile_for(gpu) is BUILTIN_CATALOG.get("h100")
    gpu.profile, gpu.product, gpu.memory_mib = "custom:Fancy GPU", "Fancy GPU", 4096
    custom = profile_for(gpu)
    assert (custom.name, custom.memory_mib) == ("Fancy GPU", 4096)
    sample = sample_gpu(gpu, custom, T0)
    assert sample.fb_total_mib == 4096
    resized = _h100()
    resized.memory_mib = 40000
    assert profile_for(resized).memory_mib == 40000


def test_bucketed_values_stable_within_bucket_for_mig() -> None:
    gpu = _mig_gpu([("3g.40gb", 100, 1000), ("2g.20gb", 50, 2000)])
    profile = profile_for(gpu)
    start = (T0 // BUCKET_SECONDS) * BUCKET_SECONDS
    a = sample_mig_device(gpu, gpu.mig_devices[1], profile, start + 1)
    b = sample_mig_device(gpu, gpu.mig_devices[1], profile, start + 9)
    assert a.gpu_util == b.gpu_util
    assert a.power_w == b.power_w
