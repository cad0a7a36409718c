"""``gradeflow-inference``: run the inference API under uvicorn (one process unless INFERENCE_WORKERS > 1)."""

from __future__ import annotations

import logging

from gradeflow_shared.logging import configure_logging

from .config import get_settings

logger = logging.getLogger(__name__)


def _fast_impl(module: str, name: str, fallback: str) -> str:
    """``name`` when its C implementation (httptools, uvloop) imports, else uvicorn's pure-Python one."""
    import importlib.util

    return name if importlib.util.find_spec(module) is not None else fallback


def main() -> None:
    import uvicorn

    settings = get_settings()
    # httptools parses a 300 KB batch body in C (h11 is pure Python); uvloop is the faster event loop
    http = _fast_impl("httptools", "httptools", "h11")
    loop = _fast_impl("uvloop", "uvloop", "asyncio")
    configure_logging(settings.log_level, settings.log_json, service="inference")
    logger.info(
        "inference on %s:%d (workers=%d, model dir %s, log %s, http %s, loop %s)",
        settings.host,
        settings.inference_port,
        settings.inference_workers,
        settings.models_path,
        "on" if settings.inference_log_enabled else "off",
        http,
        loop,
    )
    uvicorn.run(
        "gradeflow_inference.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.inference_port,
        workers=settings.inference_workers,
        http=http,
        loop=loop,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
