"""Per-product load physics the telemetry model needs beyond the profile's envelope.

Where a board reaches its power limit, how far its SM clock falls under the limit at full load,
and what its HBM draws: numbers measured on real boards (or estimated, and said so), kept here
next to the model that uses them rather than in the identity data of ``fgo_common.profiles``.
Products without an entry get :data:`GENERIC`-style values derived from their profile.
docs/profiles.md ("Load physics") lists every value with its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from fgo_common.profiles import GpuProfile


@dataclass(frozen=True, slots=True)
class LoadPhysics:
    """How one product behaves under load at its default power limit."""

    # Sustained utilisation (%) at which the board's demand reaches its power limit: above it
    # the SW power cap holds power at the limit and lowers the SM clock.
    cap_onset_util: int
    # SM clock (MHz) at 100 % sustained load with power held at the default limit.
    sm_clock_full_load_mhz: int
    # HBM power as a straight line through two (board W, memory W) readings; () on products
    # whose memory power NVML does not report (GDDR boards print N/A).
    memory_power_points: tuple[tuple[float, float], tuple[float, float]] | tuple[()] = ()
    source: str = ""


_H100_MEASURED = (
    "real H100 80GB HBM3 (r580): 1290-1335 MHz SM at 100 % load and 700-701 W "
    "(issue 21; nvml.json ClockSM 1335 at PowerUsage 701411 mW); GPU Memory Power "
    "~49 W at ~112 W board and ~137 W at ~700 W board"
)

BUILTIN_PHYSICS: dict[str, LoadPhysics] = {
    "h100-80gb-hbm3": LoadPhysics(
        80, 1305, ((112.0, 49.0), (700.0, 137.0)), f"{_H100_MEASURED}; onset: estimate"
    ),
    "h200": LoadPhysics(
        80,
        1290,
        ((112.0, 59.0), (700.0, 164.0)),
        "estimate: the H100's GH100 at the same 700 W; six HBM3e stacks draw ~1.2x the H100's "
        "five HBM3 stacks, leaving the SM a little less",
    ),
    "a100-40gb": LoadPhysics(
        85,
        1275,
        ((60.0, 21.0), (400.0, 62.0)),
        "estimate: A100 SXM4 traces under dense GEMM hold 400 W at ~1250-1300 MHz; HBM2 share "
        "scaled from the H100 readings",
    ),
    "a100-80gb": LoadPhysics(
        85,
        1275,
        ((60.0, 24.0), (400.0, 70.0)),
        "estimate: as a100-40gb; HBM2e draws a little more",
    ),
    "b200": LoadPhysics(
        80,
        1500,
        ((150.0, 80.0), (1000.0, 215.0)),
        "estimate: no public capped-clock reading; the H100's clock drop scaled to the "
        "1000 W limit; eight HBM3e stacks",
    ),
    "gb200": LoadPhysics(
        80,
        1560,
        ((160.0, 82.0), (1200.0, 225.0)),
        "estimate: as b200 with the 1200 W limit",
    ),
    "l40s": LoadPhysics(85, 2100, (), "estimate: L40S holds 350 W at ~2.1 GHz under load"),
    "l4": LoadPhysics(
        60, 1590, (), "estimate: the 72 W L4 caps early; ~1.5-1.7 GHz under sustained load"
    ),
    "t4": LoadPhysics(
        60, 1200, (), "estimate: the 70 W T4 caps early; ~1.1-1.3 GHz under sustained load"
    ),
    "a10g": LoadPhysics(85, 1560, (), "estimate: A10G at 300 W under load ~1.5-1.6 GHz"),
    "k80": LoadPhysics(90, 745, (), "estimate: K80 autoboost falls toward base at 149 W"),
}


def physics_for(profile: GpuProfile) -> LoadPhysics:
    """The product's load physics; for products without an entry the SM clock at full load is
    the profile's base clock (the clock the limit guarantees) and HBM memory power follows the
    H100's shares (44 % of board at idle, 20 % at the limit)."""
    found = BUILTIN_PHYSICS.get(profile.key)
    if found is not None:
        return found
    points: tuple[tuple[float, float], tuple[float, float]] | tuple[()] = ()
    if profile.memory_type.upper().startswith("HBM"):
        idle, limit = profile.power_idle_w, profile.power_default_limit_w
        points = ((idle, idle * 0.44), (limit, limit * 0.196))
    return LoadPhysics(
        85,
        min(profile.clock_sm_base_mhz, profile.clock_sm_max_mhz),
        points,
        "generic: base clock at full load; H100 memory power shares",
    )


def memory_power_w(physics: LoadPhysics, board_w: float) -> float | None:
    """HBM power at ``board_w`` board power (None: not reported), never above the board's."""
    if not physics.memory_power_points:
        return None
    (b0, m0), (b1, m1) = physics.memory_power_points
    slope = (m1 - m0) / (b1 - b0) if b1 != b0 else 0.0
    return max(0.0, min(board_w, m0 + slope * (board_w - b0)))
