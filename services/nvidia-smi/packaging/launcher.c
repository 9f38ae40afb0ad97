/*
 * /usr/bin/nvidia-smi inside GPU containers: a static launcher that execs the standalone fake
 * nvidia-smi from the directory the node agent mounts (default /usr/local/fake-gpu).
 *
 * Why a launcher and not the executable itself: the PyInstaller one-dir bundle finds its
 * libraries next to the path it was started from, so it must run from its own directory; a
 * static binary (no libc, no shell needed) bridges the fixed user-facing path to it, and works
 * in shell-less images too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_HOME "/usr/local/fake-gpu"

int main(int argc, char **argv) {
    (void)argc;
    const char *home = getenv("FGO_NVIDIA_SMI_HOME");
    if (home == NULL || home[0] == '\0') {
        home = DEFAULT_HOME;
    }
    char target[4096];
    int n = snprintf(target, sizeof target, "%s/nvidia-smi", home);
    if (n < 0 || (size_t)n >= sizeof target) {
        fputs("nvidia-smi: FGO_NVIDIA_SMI_HOME is too long\n", stderr);
        return 255;
    }
    argv[0] = target;
    execv(target, argv);
    /* What the real tool says when its driver is missing: the bundle is not mounted. */
    fputs("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
          "Make sure that the latest NVIDIA driver is installed and running.\n", stdout);
    fprintf(stderr, "fake nvidia-smi: cannot run %s: %s\n", target, strerror(errno));
    return 9;
}
