// Enumerates the GPUs through NVIDIA's go-nvml bindings (what NVIDIA's device plugin and GPU
// feature discovery use) and prints them as JSON, for test_nvml_go.py to compare with our
// nvidia-smi. Exit status: the nvmlReturn_t of a failed nvmlInit.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

type migInfo struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
	GI   int    `json:"gi"`
	CI   int    `json:"ci"`
}

type gpuInfo struct {
	UUID    string    `json:"uuid"`
	Name    string    `json:"name"`
	BusID   string    `json:"bus_id"`
	Total   uint64    `json:"total"`
	Used    uint64    `json:"used"`
	Minor   int       `json:"minor"`
	CCMajor int       `json:"cc_major"`
	CCMinor int       `json:"cc_minor"`
	MigMode int       `json:"mig_mode"`
	Migs    []migInfo `json:"migs"`
	Lost    bool      `json:"lost"`
	Procs   []uint32  `json:"pids"`
}

func pciBusID(raw [32]int8) string {
	b := make([]byte, 0, len(raw))
	for _, c := range raw {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

func main() {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		fmt.Fprintln(os.Stderr, "nvmlInit:", nvml.ErrorString(ret))
		os.Exit(int(ret))
	}
	defer nvml.Shutdown()
	driver, _ := nvml.SystemGetDriverVersion()
	count, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		fmt.Fprintln(os.Stderr, "nvmlDeviceGetCount:", nvml.ErrorString(ret))
		os.Exit(1)
	}
	gpus := []gpuInfo{}
	for i := 0; i < count; i++ {
		dev, ret := nvml.DeviceGetHandleByIndex(i)
		if ret == nvml.ERROR_GPU_IS_LOST {
			gpus = append(gpus, gpuInfo{Lost: true})
			continue
		}
		if ret != nvml.SUCCESS {
			fmt.Fprintln(os.Stderr, "nvmlDeviceGetHandleByIndex:", nvml.ErrorString(ret))
			os.Exit(1)
		}
		g := gpuInfo{Migs: []migInfo{}, Procs: []uint32{}}
		g.UUID, _ = dev.GetUUID()
		g.Name, _ = dev.GetName()
		pci, _ := dev.GetPciInfo()
		g.BusID = pciBusID(pci.BusId)
		mem, _ := dev.GetMemoryInfo_v2()
		g.Total, g.Used = mem.Total, mem.Used
		g.Minor, _ = dev.GetMinorNumber()
		g.CCMajor, g.CCMinor, _ = dev.GetCudaComputeCapability()
		current, _, ret := dev.GetMigMode()
		if ret == nvml.SUCCESS {
			g.MigMode = current
		}
		if current == nvml.DEVICE_MIG_ENABLE {
			max, _ := dev.GetMaxMigDeviceCount()
			for j := 0; j < max; j++ {
				mig, ret := dev.GetMigDeviceHandleByIndex(j)
				if ret != nvml.SUCCESS {
					continue
				}
				var m migInfo
				m.UUID, _ = mig.GetUUID()
				m.Name, _ = mig.GetName()
				m.GI, _ = mig.GetGpuInstanceId()
				m.CI, _ = mig.GetComputeInstanceId()
				g.Migs = append(g.Migs, m)
			}
		}
		procs, _ := dev.GetComputeRunningProcesses()
		for _, p := range procs {
			g.Procs = append(g.Procs, p.Pid)
		}
		gpus = append(gpus, g)
	}
	out, _ := json.Marshal(map[string]any{"driver": driver, "gpus": gpus})
	fmt.Println(string(out))
}
