"""Configuration: TOML file < environment < flags, errors that name the key, `config show` masks secrets."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from frontend_api.settings import ConfigFileError, Settings, load_settings, mask_url, public_view
from llmserve.serve import bind_refusal
from llmserve.settings import LauncherSettings

LLMSERVE = str(Path(sys.executable).parent / "llmserve")
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith("LLMSERVE_") and k not in ("DATABASE_URL", "REDIS_URL")
}


def run(*args, env=None):
    return subprocess.run(
        [LLMSERVE, *args], capture_output=True, text=True, timeout=60, env={**CLEAN_ENV, **(env or {})}
    )


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "llmserve.toml"
    path.write_text(
        "port = 9001\nmax_num_seqs = 8\nrate_limit_rpm = 60\n"
        'database_url = "postgresql://app:hunter2@db.internal/llm"\n'
    )
    return path


def test_precedence_file_then_environment_then_flags(config_file, monkeypatch):
    for name in [k for k in os.environ if k.startswith("LLMSERVE_") or k in ("DATABASE_URL", "REDIS_URL")]:
        monkeypatch.delenv(name)
    settings = load_settings(LauncherSettings, config_file)
    assert (settings.port, settings.max_num_seqs, settings.rate_limit_rpm) == (9001, 8, 60)
    assert settings.database_url == "postgresql+psycopg://app:hunter2@db.internal/llm"
    monkeypatch.setenv("LLMSERVE_PORT", "9002")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///other.db")
    settings = load_settings(LauncherSettings, config_file)
    assert settings.port == 9002 and settings.max_num_seqs == 8
    assert settings.database_url == "sqlite+aiosqlite:///other.db"
    assert load_settings(LauncherSettings, config_file, port=9003).port == 9003
    monkeypatch.setenv("LLMSERVE_CONFIG", str(config_file))  # the file can come from the environment too
    assert load_settings(LauncherSettings).rate_limit_rpm == 60


def test_config_show_prints_the_effective_values_with_secrets_masked(config_file):
    result = run("--config", str(config_file), "config", "show", env={"LLMSERVE_MAX_NUM_SEQS": "4"})
    assert result.returncode == 0, result.stderr
    assert "port = 9001" in result.stdout and "max_num_seqs = 4" in result.stdout
    assert (
        "hunter2" not in result.stdout
        and 'database_url = "postgresql+psycopg://app:***@db.internal/llm"' in result.stdout
    )
    assert "# redis_url = (unset)" in result.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("colour = 'red'\n", "invalid setting colour"),
        ("port = 'high'\n", "invalid setting port"),
        ("port = [\n", "not valid TOML"),
        ("database_url = 'mysql://x'\n", "invalid setting database_url"),
        ("redis_url = 'http://x'\n", "invalid setting redis_url"),
    ],
)
def test_a_bad_config_file_stops_with_a_message_naming_the_key(tmp_path, content, expected):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    result = run("--config", str(path), "config", "show")
    assert result.returncode == 2 and expected in result.stderr, result.stderr


def test_a_missing_config_file_is_an_error():
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_settings(Settings, "/nonexistent/llmserve.toml")
    assert run("--config", "/nonexistent.toml", "serve").returncode == 2


def test_mask_url_hides_only_the_password():
    assert mask_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert public_view(Settings(redis_url="rediss://u:s3cret@r/1"))["redis_url"] == "rediss://u:***@r/1"


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"host": "0.0.0.0"}, True),
        ({"host": "0.0.0.0", "auth": True}, False),
        ({"host": "127.0.0.1"}, False),
        ({"host": "::1"}, False),
        ({"host": "10.1.2.3", "allow_unauthenticated_public_bind": True}, False),
    ],
)
def test_only_loopback_without_auth(fields, refused):
    assert (bind_refusal(LauncherSettings(**fields)) is not None) == refused


def test_worker_processes_with_rate_limits_need_redis():
    with pytest.raises(ValueError, match="needs redis_url"):
        LauncherSettings(workers=2, rate_limit_rpm=10)
    assert LauncherSettings(workers=2, rate_limit_rpm=10, redis_url="redis://127.0.0.1:6379/0").workers == 2
    assert LauncherSettings(workers=4).workers == 4  # no rate limits: nothing to share


def test_the_front_end_gets_only_its_own_settings():
    launcher = LauncherSettings(port=9004, triton_grpc_port=9101, max_num_seqs=8, rate_limit_rpm=5)
    frontend = launcher.frontend()
    assert type(frontend) is Settings and (frontend.port, frontend.rate_limit_rpm) == (9004, 5)
    assert frontend.triton_grpc_url == "127.0.0.1:9101"  # the launcher's Triton
    assert not hasattr(frontend, "max_num_seqs") and "max_num_seqs" not in Settings.model_fields
    assert Settings().triton_grpc_url == "127.0.0.1:8101"
    with pytest.raises(ValueError, match="max_num_seqs"):  # the front-end alone refuses the launcher's keys
        Settings(max_num_seqs=8)
