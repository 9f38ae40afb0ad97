"""PyInstaller entry point of the standalone nvidia-smi (see build.sh)."""

import gc
import sys

# A short-lived CLI: cyclic garbage collection during start-up is pure overhead (profiling the
# bundle showed ~5 % of its CPU time in the collector while modules load).
gc.disable()

from fgo_nvidia_smi.main import main  # noqa: E402

sys.exit(main())
