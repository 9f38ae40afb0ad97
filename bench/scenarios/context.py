"""What every scenario gets: the configuration, the environment and the shared sampler."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import BenchConfig, BenchEnv
from bench.procmon import Sampler


@dataclass
class RunContext:
    config: BenchConfig
    repo: Path
    out_dir: Path
    sampler: Sampler
    env: BenchEnv | None = None
    # Facts one scenario leaves for later ones (e.g. which nodes bring-up kept).
    shared: dict[str, Any] = field(default_factory=dict)

    def require_env(self) -> BenchEnv:
        if self.env is None:
            raise RuntimeError("this scenario needs the local cluster")
        return self.env
