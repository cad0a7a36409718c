"""services/mlflow: the server command and environment (CORS, telemetry, job runner, basic auth)."""

from __future__ import annotations

import configparser
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradeflow_mlflow import __main__ as srv
from gradeflow_mlflow.config import get_settings
from gradeflow_shared.errors import ConfigError

PASSWORD = "a-long-random-test-password"


@pytest.fixture(autouse=True)
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("ENVIRONMENT", "MLFLOW_AUTH", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_CORS_ALLOWED_ORIGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_PORT", "5123")
    monkeypatch.chdir(tmp_path)  # no stray .env
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _reload(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()


def test_fixed_posture_telemetry_and_job_runner_off() -> None:
    env = srv.server_env()
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "mlflow:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]


def test_cors_defaults_to_the_ui_origin_and_refuses_star(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        srv.server_env()["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
        == "http://localhost:5123,http://127.0.0.1:5123"
    )
    assert srv.server_env(port=6000)["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"].endswith("127.0.0.1:6000")
    _reload(monkeypatch, MLFLOW_CORS_ALLOWED_ORIGINS="https://ui.example")
    assert srv.server_env()["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] == "https://ui.example"
    _reload(monkeypatch, MLFLOW_CORS_ALLOWED_ORIGINS="https://ui.example, *")
    with pytest.raises(ConfigError, match="MLFLOW_CORS_ALLOWED_ORIGINS"):
        srv.check_settings(get_settings())


def test_auth_off_in_development_on_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "--app-name" not in srv.server_command()
    assert "MLFLOW_AUTH_CONFIG_PATH" not in srv.server_env()
    srv.check_settings(get_settings())  # no password needed without auth
    _reload(monkeypatch, ENVIRONMENT="production", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    cmd = srv.server_command()
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    _reload(monkeypatch, MLFLOW_AUTH="none")
    assert "--app-name" not in srv.server_command()
    _reload(monkeypatch, ENVIRONMENT="development", MLFLOW_AUTH="basic")
    assert "--app-name" in srv.server_command()


@pytest.mark.parametrize("password", ["", "change-me", "short"])
def test_auth_needs_a_real_password(monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    _reload(monkeypatch, MLFLOW_AUTH="basic", MLFLOW_TRACKING_PASSWORD=password)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
        srv.check_settings(get_settings())


def test_auth_config_file_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _reload(
        monkeypatch,
        MLFLOW_AUTH="basic",
        MLFLOW_TRACKING_USERNAME="gf-admin",
        MLFLOW_TRACKING_PASSWORD=PASSWORD,
    )
    path = srv.write_auth_config(get_settings())
    assert path == tmp_path / "mlflow" / "basic_auth.ini"
    ini = configparser.ConfigParser()
    ini.read(path)
    assert ini["mlflow"]["database_uri"] == f"sqlite:///{tmp_path / 'mlflow' / 'basic_auth.db'}"
    assert ini["mlflow"]["admin_username"] == "gf-admin"
    assert int(ini["mlflow"]["auth_cache_ttl_seconds"]) > 0  # no scrypt on every request
    assert PASSWORD not in path.read_text()  # the password travels in the environment only
    env = srv.server_env()
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(path)
    assert (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == ("gf-admin", PASSWORD)
    # the CSRF key the basic-auth app needs: random, private, the same at the next start
    key_file = tmp_path / "mlflow" / "flask_secret_key"
    assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32 and key_file.stat().st_mode & 0o777 == 0o600
    assert srv.server_env()["MLFLOW_FLASK_SERVER_SECRET_KEY"] == env["MLFLOW_FLASK_SERVER_SECRET_KEY"]


def test_admin_password_follows_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MLflow ignores the configured password once the admin exists: the start-up sets it again."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    _reload(monkeypatch, MLFLOW_AUTH="basic", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert srv.sync_admin_password(get_settings()) is False  # no user database yet
    db = tmp_path / "mlflow" / "basic_auth.db"
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{db}")
    store.create_user("admin", "the-old-password-123", is_admin=True)
    assert srv.sync_admin_password(get_settings()) is True
    assert srv.sync_admin_password(get_settings()) is False  # already in step
    assert store.authenticate_user("admin", PASSWORD, use_primary=True)
    assert not store.authenticate_user("admin", "the-old-password-123", use_primary=True)
    store.engine.dispose()


def test_prometheus_exporter_on_with_a_fresh_folder(tmp_path: Path) -> None:
    cmd = srv.server_command()
    folder = Path(cmd[cmd.index("--expose-prometheus") + 1])
    assert folder == tmp_path / "mlflow" / "prometheus"
    folder.mkdir(parents=True)
    (folder / "counter_4242.db").write_bytes(b"counts of a process long gone")
    assert srv.reset_prometheus_dir(get_settings()) == folder
    assert folder.is_dir() and not list(folder.iterdir())
