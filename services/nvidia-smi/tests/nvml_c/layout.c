/* Prints the size and member offsets of every NVML struct the fake library fills, its version
 * macros and constants; compiled once against NVIDIA's nvml.h and once against ours
 * (nvml/fgo_nvml.h), test_nvml_abi.py compares the two outputs. */
#include <stddef.h>
#include <stdio.h>
#include NVML_HEADER

#define S(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define O(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(t, f))
#define V(c) printf("value %s %lld\n", #c, (long long)(c))

int main(void) {
    S(nvmlPciInfo_t);
    O(nvmlPciInfo_t, busIdLegacy); O(nvmlPciInfo_t, domain); O(nvmlPciInfo_t, bus);
    O(nvmlPciInfo_t, device); O(nvmlPciInfo_t, pciDeviceId); O(nvmlPciInfo_t, pciSubSystemId);
    O(nvmlPciInfo_t, busId);
    S(nvmlUtilization_t); O(nvmlUtilization_t, gpu); O(nvmlUtilization_t, memory);
    S(nvmlMemory_t); O(nvmlMemory_t, total); O(nvmlMemory_t, free); O(nvmlMemory_t, used);
    S(nvmlMemory_v2_t); O(nvmlMemory_v2_t, version); O(nvmlMemory_v2_t, total);
    O(nvmlMemory_v2_t, reserved); O(nvmlMemory_v2_t, free); O(nvmlMemory_v2_t, used);
    S(nvmlBAR1Memory_t); O(nvmlBAR1Memory_t, bar1Total); O(nvmlBAR1Memory_t, bar1Free);
    O(nvmlBAR1Memory_t, bar1Used);
    S(nvmlProcessInfo_v1_t); O(nvmlProcessInfo_v1_t, pid); O(nvmlProcessInfo_v1_t, usedGpuMemory);
    S(nvmlProcessInfo_v2_t); O(nvmlProcessInfo_v2_t, gpuInstanceId);
    O(nvmlProcessInfo_v2_t, computeInstanceId);
    S(nvmlProcessInfo_t); O(nvmlProcessInfo_t, pid); O(nvmlProcessInfo_t, usedGpuMemory);
    O(nvmlProcessInfo_t, gpuInstanceId); O(nvmlProcessInfo_t, computeInstanceId);
    S(nvmlDevice_t); S(nvmlReturn_t); S(nvmlDeviceArchitecture_t); S(nvmlBrandType_t);
    S(nvmlClockType_t); S(nvmlPstates_t); S(nvmlEnableState_t); S(nvmlComputeMode_t);
    S(nvmlTemperatureSensors_t); S(nvmlTemperatureThresholds_t);
    V(nvmlMemory_v2);
    V(NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE); V(NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE);
    V(NVML_DEVICE_UUID_V2_BUFFER_SIZE); V(NVML_DEVICE_NAME_V2_BUFFER_SIZE);
    V(NVML_DEVICE_SERIAL_BUFFER_SIZE); V(NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE);
    V(NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE);
    V(NVML_CLOCK_GRAPHICS); V(NVML_CLOCK_SM); V(NVML_CLOCK_MEM); V(NVML_CLOCK_VIDEO);
    V(NVML_TEMPERATURE_GPU); V(NVML_TEMPERATURE_THRESHOLD_SHUTDOWN);
    V(NVML_TEMPERATURE_THRESHOLD_SLOWDOWN); V(NVML_DEVICE_MIG_DISABLE); V(NVML_DEVICE_MIG_ENABLE);
    V(NVML_FEATURE_DISABLED); V(NVML_FEATURE_ENABLED); V(NVML_COMPUTEMODE_DEFAULT);
    V(NVML_PSTATE_UNKNOWN);
    V(NVML_SUCCESS); V(NVML_ERROR_UNINITIALIZED); V(NVML_ERROR_INVALID_ARGUMENT);
    V(NVML_ERROR_NOT_SUPPORTED); V(NVML_ERROR_NO_PERMISSION); V(NVML_ERROR_ALREADY_INITIALIZED);
    V(NVML_ERROR_NOT_FOUND); V(NVML_ERROR_INSUFFICIENT_SIZE); V(NVML_ERROR_INSUFFICIENT_POWER);
    V(NVML_ERROR_DRIVER_NOT_LOADED); V(NVML_ERROR_TIMEOUT); V(NVML_ERROR_IRQ_ISSUE);
    V(NVML_ERROR_LIBRARY_NOT_FOUND); V(NVML_ERROR_FUNCTION_NOT_FOUND);
    V(NVML_ERROR_CORRUPTED_INFOROM); V(NVML_ERROR_GPU_IS_LOST); V(NVML_ERROR_RESET_REQUIRED);
    V(NVML_ERROR_OPERATING_SYSTEM); V(NVML_ERROR_LIB_RM_VERSION_MISMATCH); V(NVML_ERROR_IN_USE);
    V(NVML_ERROR_MEMORY); V(NVML_ERROR_NO_DATA); V(NVML_ERROR_VGPU_ECC_NOT_SUPPORTED);
    V(NVML_ERROR_INSUFFICIENT_RESOURCES); V(NVML_ERROR_FREQ_NOT_SUPPORTED);
    V(NVML_ERROR_ARGUMENT_VERSION_MISMATCH); V(NVML_ERROR_DEPRECATED); V(NVML_ERROR_NOT_READY);
    V(NVML_ERROR_GPU_NOT_FOUND); V(NVML_ERROR_INVALID_STATE);
    V(NVML_ERROR_RESET_TYPE_NOT_SUPPORTED); V(NVML_ERROR_UNKNOWN);
    return 0;
}
