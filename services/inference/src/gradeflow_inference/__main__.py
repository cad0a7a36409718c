"""``gradeflow-inference``: run the inference API under uvicorn (one process unless INFERENCE_WORKERS > 1)."""

from __future__ import annotations

import logging

from gradeflow_shared.logging import configure_logging

from .config import get_settings

logger = logging.getLogger(__name__)


def main() -> None:
    import uvicorn

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json, service="inference")
    logger.info(
        "inference on %s:%d (workers=%d, model dir %s, log %s)",
        settings.host,
        settings.inference_port,
        settings.inference_workers,
        settings.models_path,
        "on" if settings.inference_log_enabled else "off",
    )
    uvicorn.run(
        "gradeflow_inference.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.inference_port,
        workers=settings.inference_workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
