"""PyInstaller entry point of the standalone nvidia-smi (see build.sh)."""

import sys

from fgo_nvidia_smi.main import main

sys.exit(main())
