/* Calls every function the fake libnvidia-ml.so.1 exports, through NVIDIA's own nvml.h
 * prototypes and structs, against the 8-GPU test node (GPU 7 in MIG mode); prints one line per
 * call: "<function> <nvmlReturn_t> <value>". Guard bytes after each struct catch a library
 * that writes past what the header says. test_nvml_abi.py checks the lines. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <nvml.h>
#include <stdio.h>
#include <string.h>

/* The call first, then the values it wrote (argument evaluation order is unspecified). */
#define R(name, call, fmt, ...)                                   \
    do {                                                          \
        int rc_ = (int)(call);                                    \
        printf("%s %d " fmt "\n", #name, rc_, __VA_ARGS__);       \
    } while (0)
#define GUARD 0xA5
#define GUARDED(type, var) \
    struct { type v; unsigned char guard[32]; } var; memset(&var, GUARD, sizeof var)
static int guard_ok(const unsigned char *g) {
    for (int i = 0; i < 32; i++)
        if (g[i] != GUARD) return 0;
    return 1;
}

int main(void) {
    unsigned int u = 0, u2 = 0, count = 0;
    int i1 = 0, i2 = 0;
    unsigned long long ull = 0;
    char text[128];
    nvmlDevice_t h0, h1, h7, mig, parent, found;

    R(nvmlDeviceGetCount_v2, nvmlDeviceGetCount_v2(&u), "%s", "before-init");
    R(nvmlShutdown, nvmlShutdown(), "%s", "before-init");
    R(nvmlInit_v2, nvmlInit_v2(), "%s", "-");
    R(nvmlInit, nvmlInit(), "%s", "-");
    R(nvmlInitWithFlags, nvmlInitWithFlags(0), "%s", "-");
    R(nvmlErrorString, 0, "%s", nvmlErrorString(NVML_ERROR_GPU_IS_LOST));
    R(nvmlSystemGetDriverVersion, nvmlSystemGetDriverVersion(text, sizeof text), "%s", text);
    R(nvmlSystemGetDriverVersion, nvmlSystemGetDriverVersion(text, 4), "%s", "short-buffer");
    R(nvmlSystemGetNVMLVersion, nvmlSystemGetNVMLVersion(text, sizeof text), "%s", text);
    R(nvmlSystemGetCudaDriverVersion, nvmlSystemGetCudaDriverVersion(&i1), "%d", i1);
    R(nvmlSystemGetCudaDriverVersion_v2, nvmlSystemGetCudaDriverVersion_v2(&i1), "%d", i1);
    R(nvmlDeviceGetCount_v2, nvmlDeviceGetCount_v2(&count), "%u", count);
    R(nvmlDeviceGetCount, nvmlDeviceGetCount(&count), "%u", count);
    R(nvmlDeviceGetHandleByIndex, nvmlDeviceGetHandleByIndex(0, &h0), "%s", "0");
    R(nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetHandleByIndex_v2(1, &h1), "%s", "1");
    R(nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetHandleByIndex_v2(7, &h7), "%s", "7");
    R(nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetHandleByIndex_v2(99, &found), "%s", "99");
    R(nvmlDeviceGetIndex, nvmlDeviceGetIndex(h7, &u), "%u", u);

    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    R(nvmlDeviceGetUUID, nvmlDeviceGetUUID(h1, uuid, sizeof uuid), "%s", uuid);
    R(nvmlDeviceGetHandleByUUID, nvmlDeviceGetHandleByUUID(uuid, &found), "%d", found == h1);
    R(nvmlDeviceGetHandleByUUID, nvmlDeviceGetHandleByUUID("GPU-nope", &found), "%s", "nope");
    R(nvmlDeviceGetName, nvmlDeviceGetName(h1, text, sizeof text), "%s", text);
    R(nvmlDeviceGetSerial, nvmlDeviceGetSerial(h1, text, NVML_DEVICE_SERIAL_BUFFER_SIZE), "%s", text);
    R(nvmlDeviceGetHandleBySerial, nvmlDeviceGetHandleBySerial(text, &found), "%d", found == h1);

    GUARDED(nvmlPciInfo_t, pci);
    R(nvmlDeviceGetPciInfo_v3, nvmlDeviceGetPciInfo_v3(h1, &pci.v), "%s/%s/%08x/%08x/%d",
      pci.v.busId, pci.v.busIdLegacy, pci.v.pciDeviceId, pci.v.pciSubSystemId, guard_ok(pci.guard));
    R(nvmlDeviceGetPciInfo_v2, nvmlDeviceGetPciInfo_v2(h1, &pci.v), "%s", pci.v.busId);
    R(nvmlDeviceGetPciInfo, nvmlDeviceGetPciInfo(h1, &pci.v), "%s", pci.v.busIdLegacy);
    R(nvmlDeviceGetHandleByPciBusId_v2, nvmlDeviceGetHandleByPciBusId_v2(pci.v.busId, &found),
      "%d", found == h1);
    R(nvmlDeviceGetHandleByPciBusId, nvmlDeviceGetHandleByPciBusId(pci.v.busIdLegacy, &found),
      "%d", found == h1);

    GUARDED(nvmlMemory_t, mem);
    R(nvmlDeviceGetMemoryInfo, nvmlDeviceGetMemoryInfo(h1, &mem.v), "%llu/%llu/%llu/%d",
      mem.v.total, mem.v.used, mem.v.free, guard_ok(mem.guard));
    GUARDED(nvmlMemory_v2_t, mem2);
    mem2.v.version = nvmlMemory_v2;
    R(nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetMemoryInfo_v2(h1, &mem2.v),
      "%llu/%llu/%llu/%llu/%d", mem2.v.total, mem2.v.reserved, mem2.v.used, mem2.v.free,
      guard_ok(mem2.guard));
    mem2.v.version = 1;
    R(nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetMemoryInfo_v2(h1, &mem2.v), "%s", "bad-version");
    GUARDED(nvmlBAR1Memory_t, bar1);
    R(nvmlDeviceGetBAR1MemoryInfo, nvmlDeviceGetBAR1MemoryInfo(h1, &bar1.v), "%llu/%d",
      bar1.v.bar1Total, guard_ok(bar1.guard));
    GUARDED(nvmlUtilization_t, util);
    R(nvmlDeviceGetUtilizationRates, nvmlDeviceGetUtilizationRates(h1, &util.v), "%u/%u/%d",
      util.v.gpu, util.v.memory, guard_ok(util.guard));
    R(nvmlDeviceGetUtilizationRates, nvmlDeviceGetUtilizationRates(h7, &util.v), "%s", "mig-gpu");
    R(nvmlDeviceGetEncoderUtilization, nvmlDeviceGetEncoderUtilization(h1, &u, &u2), "%u", u);
    R(nvmlDeviceGetDecoderUtilization, nvmlDeviceGetDecoderUtilization(h1, &u, &u2), "%u", u);

    R(nvmlDeviceGetTemperature, nvmlDeviceGetTemperature(h1, NVML_TEMPERATURE_GPU, &u), "%u", u);
    R(nvmlDeviceGetTemperatureThreshold,
      nvmlDeviceGetTemperatureThreshold(h1, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN, &u), "%u", u);
    R(nvmlDeviceGetPowerUsage, nvmlDeviceGetPowerUsage(h1, &u), "%u", u);
    R(nvmlDeviceGetEnforcedPowerLimit, nvmlDeviceGetEnforcedPowerLimit(h1, &u), "%u", u);
    R(nvmlDeviceGetPowerManagementLimit, nvmlDeviceGetPowerManagementLimit(h1, &u), "%u", u);
    R(nvmlDeviceGetPowerManagementDefaultLimit, nvmlDeviceGetPowerManagementDefaultLimit(h1, &u),
      "%u", u);
    R(nvmlDeviceGetPowerManagementLimitConstraints,
      nvmlDeviceGetPowerManagementLimitConstraints(h1, &u, &u2), "%u/%u", u, u2);
    R(nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetTotalEnergyConsumption(h1, &ull), "%llu",
      ull);
    nvmlPstates_t ps;
    R(nvmlDeviceGetPerformanceState, nvmlDeviceGetPerformanceState(h1, &ps), "%d", (int)ps);
    R(nvmlDeviceGetPowerState, nvmlDeviceGetPowerState(h1, &ps), "%d", (int)ps);
    R(nvmlDeviceGetClockInfo, nvmlDeviceGetClockInfo(h1, NVML_CLOCK_SM, &u), "%u", u);
    R(nvmlDeviceGetMaxClockInfo, nvmlDeviceGetMaxClockInfo(h1, NVML_CLOCK_MEM, &u), "%u", u);
    R(nvmlDeviceGetCurrentClocksEventReasons, nvmlDeviceGetCurrentClocksEventReasons(h1, &ull),
      "%llx", ull);
    R(nvmlDeviceGetCurrentClocksThrottleReasons,
      nvmlDeviceGetCurrentClocksThrottleReasons(h1, &ull), "%llx", ull);
    R(nvmlDeviceGetSupportedClocksEventReasons, nvmlDeviceGetSupportedClocksEventReasons(h1, &ull),
      "%llx", ull);
    R(nvmlDeviceGetSupportedClocksThrottleReasons,
      nvmlDeviceGetSupportedClocksThrottleReasons(h1, &ull), "%llx", ull);
    R(nvmlDeviceGetFanSpeed, nvmlDeviceGetFanSpeed(h1, &u), "%s", "passive");
    R(nvmlDeviceGetNumFans, nvmlDeviceGetNumFans(h1, &u), "%u", u);
    R(nvmlDeviceGetMinorNumber, nvmlDeviceGetMinorNumber(h7, &u), "%u", u);
    nvmlDeviceArchitecture_t arch;
    R(nvmlDeviceGetArchitecture, nvmlDeviceGetArchitecture(h1, &arch), "%u", arch);
    R(nvmlDeviceGetCudaComputeCapability, nvmlDeviceGetCudaComputeCapability(h1, &i1, &i2),
      "%d.%d", i1, i2);
    nvmlBrandType_t brand;
    R(nvmlDeviceGetBrand, nvmlDeviceGetBrand(h1, &brand), "%d", (int)brand);
    nvmlEnableState_t state;
    R(nvmlDeviceGetPersistenceMode, nvmlDeviceGetPersistenceMode(h1, &state), "%d", (int)state);
    R(nvmlDeviceGetDisplayMode, nvmlDeviceGetDisplayMode(h1, &state), "%d", (int)state);
    R(nvmlDeviceGetDisplayActive, nvmlDeviceGetDisplayActive(h1, &state), "%d", (int)state);
    nvmlComputeMode_t cmode;
    R(nvmlDeviceGetComputeMode, nvmlDeviceGetComputeMode(h1, &cmode), "%d", (int)cmode);

    R(nvmlDeviceGetEccMode, nvmlDeviceGetEccMode(h1, &state, &state), "%d", (int)state);
    R(nvmlDeviceGetTotalEccErrors,
      nvmlDeviceGetTotalEccErrors(h1, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, &ull),
      "%llu", ull);
    nvmlDriverModel_t model, model2;
    R(nvmlDeviceGetDriverModel_v2, nvmlDeviceGetDriverModel_v2(h1, &model, &model2), "%s", "linux");
    R(nvmlDeviceGetDriverModel, nvmlDeviceGetDriverModel(h1, &model, &model2), "%s", "linux");
    count = 0;
    R(nvmlDeviceGetProcessUtilization, nvmlDeviceGetProcessUtilization(h1, NULL, &count, 0), "%u",
      count);

    /* NVML's two-call protocol, and each struct version's stride. */
    count = 0;
    R(nvmlDeviceGetComputeRunningProcesses_v3,
      nvmlDeviceGetComputeRunningProcesses_v3(h1, &count, NULL), "%u", count);
    struct { nvmlProcessInfo_t v[1]; unsigned char guard[32]; } p3;
    memset(&p3, GUARD, sizeof p3);
    count = 1;
    R(nvmlDeviceGetComputeRunningProcesses_v3,
      nvmlDeviceGetComputeRunningProcesses_v3(h1, &count, p3.v), "%u/%llu/%x/%x/%d", p3.v[0].pid,
      p3.v[0].usedGpuMemory, p3.v[0].gpuInstanceId, p3.v[0].computeInstanceId, guard_ok(p3.guard));
    struct { nvmlProcessInfo_v2_t v[1]; unsigned char guard[32]; } p2;
    memset(&p2, GUARD, sizeof p2);
    count = 1;
    R(nvmlDeviceGetComputeRunningProcesses_v2,
      nvmlDeviceGetComputeRunningProcesses_v2(h1, &count, p2.v), "%u/%d", p2.v[0].pid,
      guard_ok(p2.guard));
    struct { nvmlProcessInfo_v1_t v[1]; unsigned char guard[32]; } p1;
    memset(&p1, GUARD, sizeof p1);
    count = 1;
    R(nvmlDeviceGetComputeRunningProcesses,
      nvmlDeviceGetComputeRunningProcesses(h1, &count, p1.v), "%u/%llu/%d", p1.v[0].pid,
      p1.v[0].usedGpuMemory, guard_ok(p1.guard));
    count = 0;
    R(nvmlDeviceGetGraphicsRunningProcesses_v3,
      nvmlDeviceGetGraphicsRunningProcesses_v3(h1, &count, NULL), "%u", count);
    R(nvmlDeviceGetGraphicsRunningProcesses_v2,
      nvmlDeviceGetGraphicsRunningProcesses_v2(h1, &count, NULL), "%u", count);
    R(nvmlDeviceGetGraphicsRunningProcesses,
      nvmlDeviceGetGraphicsRunningProcesses(h1, &count, NULL), "%u", count);
    R(nvmlDeviceGetMPSComputeRunningProcesses_v3,
      nvmlDeviceGetMPSComputeRunningProcesses_v3(h1, &count, NULL), "%u", count);
    R(nvmlSystemGetProcessName, nvmlSystemGetProcessName(p3.v[0].pid, text, sizeof text), "%s",
      text);

    R(nvmlDeviceGetMigMode, nvmlDeviceGetMigMode(h7, &u, &u2), "%u/%u", u, u2);
    R(nvmlDeviceGetMaxMigDeviceCount, nvmlDeviceGetMaxMigDeviceCount(h7, &u), "%u", u);
    R(nvmlDeviceGetMigDeviceHandleByIndex, nvmlDeviceGetMigDeviceHandleByIndex(h7, 0, &mig),
      "%s", "0");
    R(nvmlDeviceGetMigDeviceHandleByIndex, nvmlDeviceGetMigDeviceHandleByIndex(h1, 0, &found),
      "%s", "not-mig-mode");
    R(nvmlDeviceIsMigDeviceHandle, nvmlDeviceIsMigDeviceHandle(mig, &u), "%u", u);
    R(nvmlDeviceGetGpuInstanceId, nvmlDeviceGetGpuInstanceId(mig, &u), "%u", u);
    R(nvmlDeviceGetComputeInstanceId, nvmlDeviceGetComputeInstanceId(mig, &u), "%u", u);
    R(nvmlDeviceGetGpuInstanceId, nvmlDeviceGetGpuInstanceId(h1, &u), "%s", "whole-gpu");
    R(nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
      nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig, &parent), "%d", parent == h7);
    R(nvmlDeviceGetName, nvmlDeviceGetName(mig, text, sizeof text), "%s", text);
    R(nvmlDeviceGetUUID, nvmlDeviceGetUUID(mig, uuid, sizeof uuid), "%s", uuid);
    R(nvmlDeviceGetHandleByUUID, nvmlDeviceGetHandleByUUID(uuid, &found), "%d", found == mig);
    R(nvmlDeviceGetMemoryInfo, nvmlDeviceGetMemoryInfo(mig, &mem.v), "%llu", mem.v.total);
    count = 4;
    R(nvmlDeviceGetComputeRunningProcesses_v3,
      nvmlDeviceGetComputeRunningProcesses_v3(mig, &count, p3.v), "%u/%u/%u", count,
      p3.v[0].gpuInstanceId, p3.v[0].computeInstanceId);
    R(nvmlDeviceGetTemperature, nvmlDeviceGetTemperature(mig, NVML_TEMPERATURE_GPU, &u), "%s",
      "mig");
    R(nvmlDeviceGetName, nvmlDeviceGetName((nvmlDevice_t)&u, text, sizeof text), "%s", "bogus");
    R(nvmlDeviceGetName, nvmlDeviceGetName(h1, text, 4), "%s", "short-buffer");

    R(nvmlShutdown, nvmlShutdown(), "%s", "-");
    R(nvmlShutdown, nvmlShutdown(), "%s", "-");
    R(nvmlShutdown, nvmlShutdown(), "%s", "-");
    R(nvmlDeviceGetCount_v2, nvmlDeviceGetCount_v2(&u), "%s", "after-shutdown");
    R(nvmlShutdown, nvmlShutdown(), "%s", "-");
    (void)h0;
    return 0;
}
