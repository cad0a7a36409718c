"""Secrets for a local run (``make up``, ``make demo``): random tokens kept in a git-ignored file.

There is no working default secret: on first start ``ensure_local_secrets`` writes
``DATA_DIR/secrets.env`` (mode 0600, one ``NAME=value`` per line, ``secrets.token_urlsafe``) and later
starts read it back. A variable already set in the environment wins over the file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_NAMES = ("ADMIN_TOKEN", "LABELLER_TOKEN", "MLFLOW_TRACKING_PASSWORD")
SECRETS_FILE = "secrets.env"


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a dotenv-style file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def ensure_local_secrets(
    data_dir: Path, environ: dict[str, str] | None = None, names: tuple[str, ...] = SECRET_NAMES
) -> tuple[dict[str, str], Path, bool]:
    """The secrets to run with, the file that holds them and whether it was created just now."""
    env = dict(os.environ if environ is None else environ)
    path = Path(data_dir) / SECRETS_FILE
    stored = read_env_file(path)
    missing = [n for n in names if n not in stored]
    created = False
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        stored.update({n: secrets.token_urlsafe(32) for n in missing})
        tmp = path.with_name(f".{SECRETS_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# GradeFlow local secrets (created by `make up`; keep private, never commit)\n")
            fh.writelines(f"{n}={stored[n]}\n" for n in stored)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return {n: env.get(n) or stored[n] for n in names}, path, created
