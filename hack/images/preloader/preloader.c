/*
 * No-op stand-in for Run:ai's GPU-fraction preloaders.
 *
 * Run:ai starts fractional-GPU containers with LD_PRELOAD naming
 * /var/lib/runai/shared/memory/preloader.so and /var/lib/runai/shared/pid/preloader.so; the
 * real libraries virtualise GPU memory and PIDs inside CUDA calls. Simulated GPUs have no CUDA
 * to intercept, but the dynamic loader refuses to start a program whose LD_PRELOAD names a file
 * it cannot load. This library loads anywhere (built without libc: no DT_NEEDED entries, so
 * glibc and musl programs alike accept it) and changes nothing. docs/runai.md.
 */

/* Identifies the stub to tools that read the file (strings, nm); never called. */
__attribute__((visibility("default"), used))
const char fgo_runai_preloader_stub[] = "fake-gpu-operator no-op Run:ai preloader";
