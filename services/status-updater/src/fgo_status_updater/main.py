"""Entry point of the status-updater service."""

from __future__ import annotations

from dataclasses import dataclass

from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext, run_service
from fgo_common.runtime.settings import SettingsError, env_field, load_settings

COMPONENT = "status-updater"


@dataclass(frozen=True)
class Settings:
    health_port: int = env_field("HEALTH_PORT", 8080, "port of /healthz, /readyz, /metrics")
    log_level: str = env_field(
        "LOG_LEVEL", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )


async def idle(ctx: ServiceContext) -> None:
    ctx.readiness.set("started")
    await ctx.stop.wait()


def main() -> int:
    try:
        settings = load_settings(Settings)
    except SettingsError as exc:
        print(f"{COMPONENT}: invalid setting: {exc}")
        return 2
    configure_logging(COMPONENT, settings.log_level)
    return run_service(COMPONENT, {"idle": idle}, health_port=settings.health_port)
