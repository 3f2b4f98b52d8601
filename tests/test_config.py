"""config.load: schedules.yaml + MAILER_* → frozen models, and errors that name the place."""

from __future__ import annotations

import contextlib
import os
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mailer import config
from mailer.config import Settings, yamlfile
from mailer.errors import ConfigError
from mailer.schedule import ScheduleSpec

REPO = Path(__file__).resolve().parent.parent

NEWSLETTER = """\
newsletters:
  ml-issues:
    name: Machine Learning Issues
    from: "Machine Learning Issues <newsletter@example.com>"
    issues: content/ml-issues
    schedule:
      every: 2 weeks
      starting: 2026-12-07 09:00
      timezone: Europe/Berlin
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "content" / "ml-issues").mkdir(parents=True)
    return tmp_path


def write(project: Path, text: str) -> Path:
    path = project / "schedules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config.load(path, env=env or {})
    return caught.value


def test_the_example_schedules_yaml_loads() -> None:
    cfg = config.load(REPO / "schedules.yaml", env={})
    letter = cfg.newsletter("ml-issues")
    assert cfg.settings.smtp_url == "capture"
    assert cfg.settings.concurrency == 10
    assert cfg.settings.postal_address
    assert cfg.settings.database_url == f"sqlite:///{REPO}/var/mailer.db"
    assert letter.sender == "Machine Learning Issues <newsletter@example.com>"
    assert letter.issues == REPO / "content" / "ml-issues"
    assert letter.schedule == ScheduleSpec(every="2 weeks", starting=datetime(2026, 12, 7, 9, 0),
                                           timezone="Europe/Berlin")
    assert str(letter.tz) == "Europe/Berlin"


def test_defaults_put_the_database_and_var_dir_next_to_the_config(project: Path) -> None:
    cfg = config.load(write(project, NEWSLETTER), env={})
    assert cfg.root == project
    assert cfg.settings.var_dir == project / "var"
    assert cfg.settings.database_url == f"sqlite:///{project}/var/mailer.db"
    assert cfg.settings.base_url == "http://127.0.0.1:8025"
    assert cfg.settings.secret_key is None


def test_a_relative_sqlite_url_resolves_against_the_config_dir_not_the_cwd(
        project: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    path = write(project, "settings:\n  database_url: sqlite+aiosqlite:///data/m.db?timeout=5\n")
    assert config.load(path, env={}).settings.database_url == (
        f"sqlite+aiosqlite:///{project}/data/m.db?timeout=5")


@pytest.mark.parametrize("url", ["sqlite:////srv/mailer.db", "sqlite:///:memory:",
                                 "postgresql+asyncpg://mailer@db.example.com/mailer"])
def test_absolute_and_server_database_urls_are_kept(project: Path, url: str) -> None:
    path = write(project, f"settings:\n  database_url: '{url}'\n")
    assert config.load(path, env={}).settings.database_url == url


def test_base_url_loses_its_trailing_slash_and_follows_port_by_default(project: Path) -> None:
    assert config.load(write(project, "settings:\n  base_url: https://news.example.com/\n"),
                       env={}).settings.base_url == "https://news.example.com"
    assert config.load(write(project, "settings:\n  port: 9000\n"),
                       env={}).settings.base_url == "http://127.0.0.1:9000"


def test_mailer_env_variables_override_settings(project: Path) -> None:
    path = write(project, "settings:\n  concurrency: 10\n  smtp_url: capture\n")
    env = {"MAILER_CONCURRENCY": "3", "MAILER_SMTP_URL": "smtp://me@mx.example.com:587",
           "MAILER_DATABASE_URL": "sqlite:///other.db", "MAILER_BASE_URL": "https://x.example/",
           "MAILER_TEST_NOW": "2026-12-07T09:00:00", "MAILER_LOG_JSON": "true"}
    settings = config.load(path, env=env).settings
    assert settings.concurrency == 3
    assert settings.smtp_url == "smtp://me@mx.example.com:587"
    assert settings.database_url == f"sqlite:///{project}/other.db"
    assert settings.base_url == "https://x.example"
    assert settings.test_now == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert settings.log_json is True


def test_a_bad_env_value_names_the_setting_and_the_variable(project: Path) -> None:
    error = load_error(write(project, NEWSLETTER), {"MAILER_CONCURRENCY": "0"})
    assert error.field == "settings.concurrency"
    assert "MAILER_CONCURRENCY" in error.message
    assert "greater than or equal to 1" in error.message


def test_the_config_path_defaults_to_mailer_config(project: Path) -> None:
    path = write(project, NEWSLETTER)
    assert config.load(env={"MAILER_CONFIG": str(path)}).path == path


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nope.yaml")
    assert error.file == str(tmp_path / "nope.yaml")
    assert "not found" in error.message


def test_malformed_yaml_names_the_line(project: Path) -> None:
    error = load_error(write(project, "settings:\n  concurrency: 3\n  bad: [unclosed\n"))
    assert error.line == 3
    assert str(error).startswith(f"{project / 'schedules.yaml'}:{error.line}: ")
    assert "malformed YAML" in error.message


def test_a_duplicate_key_is_an_error_on_its_second_line(project: Path) -> None:
    error = load_error(write(project, "settings:\n  concurrency: 3\n  concurrency: 4\n"))
    assert (error.line, error.field) == (3, "settings.concurrency")


def test_an_anchor_or_alias_is_refused_naming_its_line(project: Path) -> None:
    error = load_error(write(project, "settings:\n  concurrency: &n 3\n  max_attempts: *n\n"))
    assert error.line == 2
    assert error.message == "anchors and aliases (&x / *x) are not supported"


def test_an_unknown_settings_key_is_named_with_its_line(project: Path) -> None:
    error = load_error(write(project, "settings:\n  concurrency: 3\n  concurency: 4\n"))
    assert (error.line, error.field) == (3, "settings.concurency")
    assert "unknown key" in error.message and "concurrency" in error.message


def test_an_unknown_top_level_key_is_an_error(project: Path) -> None:
    error = load_error(write(project, "setings: {}\n"))
    assert (error.line, error.field) == (1, "setings")


def test_a_bad_every_names_the_newsletter_schedule_key_and_line(project: Path) -> None:
    error = load_error(write(project, NEWSLETTER.replace("2 weeks", "fortnightly")))
    assert error.field == "newsletters.ml-issues.schedule.every"
    assert error.line == 7
    assert "'2 weeks'" in error.message
    assert str(error) == f"{project / 'schedules.yaml'}:7: {error.field}: {error.message}"


def test_an_unknown_schedule_key_is_named(project: Path) -> None:
    error = load_error(write(project, NEWSLETTER.replace("timezone:", "tz:")))
    assert (error.field, error.line) == ("newsletters.ml-issues.schedule.tz", 9)
    assert "timezone" in error.message


@pytest.mark.parametrize(("schedule", "field", "words"), [
    ("every: 2 weeks", "starting", "needs starting"),
    ("cron: '0 9 * * 1'\n      every: 1 week", "every", "not both"),
    ("cron: '0 9 * *'", "cron", "5 crontab fields"),
    ("cron: '0 25 * * 1'", "cron", "invalid cron"),
    ("timezone: Europe/Berlin", "every", "needs cron"),
    ("cron: '0 9 * * 1'\n      timezone: Mars/Olympus", "timezone", "IANA"),
])
def test_schedule_errors_name_the_key(project: Path, schedule: str, field: str,
                                      words: str) -> None:
    text = NEWSLETTER.split("    schedule:")[0] + "    schedule:\n      " + schedule + "\n"
    error = load_error(write(project, text))
    assert error.field == f"newsletters.ml-issues.schedule.{field}"
    assert words in error.message
    assert error.line is not None and error.line >= 6


def test_a_missing_required_key_names_it_at_its_parents_line(project: Path) -> None:
    error = load_error(write(project, NEWSLETTER.replace("    name: Machine Learning Issues\n",
                                                         "")))
    assert (error.field, error.line) == ("newsletters.ml-issues.name", 2)
    assert "required" in error.message


def test_a_bad_from_address_names_the_yaml_key_from(project: Path) -> None:
    error = load_error(write(project, NEWSLETTER.replace("newsletter@example.com", "nobody")))
    assert (error.field, error.line) == ("newsletters.ml-issues.from", 4)


def test_a_missing_issues_folder_is_an_error(project: Path) -> None:
    error = load_error(write(project, NEWSLETTER.replace("content/ml-issues", "content/nope")))
    assert error.field == "newsletters.ml-issues.issues"
    assert str(project / "content" / "nope") in error.message


def test_a_newsletter_id_must_be_lower_case(project: Path) -> None:
    error = load_error(write(project, NEWSLETTER.replace("  ml-issues:", "  ML_Issues:")))
    assert (error.field, error.line) == ("newsletters.ML_Issues", 2)


def test_a_secret_in_yaml_is_refused(project: Path) -> None:
    error = load_error(write(project, "settings:\n  secret_key: hunter2\n"))
    assert (error.field, error.line) == ("settings.secret_key", 2)
    assert "secrets only from the environment" in error.message
    assert "hunter2" not in str(error)


def test_a_password_in_the_yaml_smtp_url_is_refused(project: Path) -> None:
    error = load_error(write(project, "settings:\n  smtp_url: smtp://me:hunter2@mx.example\n"))
    assert error.field == "settings.smtp_url"
    assert "MAILER_SMTP_PASSWORD" in error.message


def test_secrets_come_from_env_and_stay_out_of_reprs(project: Path) -> None:
    cfg = config.load(write(project, NEWSLETTER),
                      env={"MAILER_SECRET_KEY": "s3cret-key", "MAILER_SMTP_PASSWORD": "pw"})
    assert cfg.settings.secret_key is not None
    assert cfg.settings.secret_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(cfg) and "s3cret-key" not in str(cfg.settings)


def test_secret_files_must_be_private(project: Path) -> None:
    key = project / "secret.key"
    key.write_text("from-a-file\n")
    key.chmod(0o600)
    cfg = config.load(write(project, NEWSLETTER), env={"MAILER_SECRET_KEY_FILE": str(key)})
    assert cfg.settings.secret_key is not None
    assert cfg.settings.secret_key.get_secret_value() == "from-a-file"
    key.chmod(0o644)
    error = load_error(project / "schedules.yaml", {"MAILER_SECRET_KEY_FILE": str(key)})
    assert error.file == str(key)
    assert "0644" in error.message and "chmod 600" in error.message


def test_a_secret_from_both_env_and_file_is_ambiguous(project: Path) -> None:
    env = {"MAILER_SMTP_PASSWORD": "a", "MAILER_SMTP_PASSWORD_FILE": "/nonexistent"}
    assert load_error(write(project, NEWSLETTER), env).field == "MAILER_SMTP_PASSWORD"


def test_read_secret_file_refuses_a_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.read_secret_file(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    with pytest.raises(ConfigError, match="empty"):
        config.read_secret_file(empty)


def test_dkim_settings_load_without_the_key_which_is_checked_where_it_signs(
    project: Path,
) -> None:
    # The key often lives in the daemon's environment only; the other commands load without it.
    path = write(project, "settings:\n  dkim_selector: mail\n  dkim_domain: example.com\n")
    settings = config.load(path, env={}).settings
    assert settings.dkim_key is None and settings.dkim_key_file is None
    assert settings.dkim_selector == "mail"
    key = project / "dkim.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    settings = config.load(path, env={"MAILER_DKIM_KEY_FILE": str(key)}).settings
    assert settings.dkim_key is not None and settings.dkim_key_file is None


def test_dkim_key_file_is_relative_to_the_config_file_and_not_read_on_load(
    project: Path,
) -> None:
    path = write(project, "settings:\n  dkim_key_file: keys/dkim.pem\n")
    settings = config.load(path, env={}).settings  # no such file yet: only sending reads it
    assert settings.dkim_key_file == project / "keys" / "dkim.pem"


def test_unknown_newsletter_lists_the_known_ones(project: Path) -> None:
    cfg = config.load(write(project, NEWSLETTER), env={})
    with pytest.raises(ConfigError, match=r"unknown newsletter 'x' \(known: ml-issues\)"):
        cfg.newsletter("x")


def test_templates_dir_falls_back_to_the_bundled_templates(project: Path) -> None:
    cfg = config.load(write(project, NEWSLETTER), env={})
    assert cfg.templates_dir == config.BUNDLED_TEMPLATES
    (project / "templates").mkdir()
    assert config.load(project / "schedules.yaml", env={}).templates_dir == project / "templates"


def test_models_are_frozen(project: Path) -> None:
    cfg = config.load(write(project, NEWSLETTER), env={})
    with pytest.raises(ValidationError):
        cfg.settings.concurrency = 1  # type: ignore[misc]


def test_settings_built_directly_still_get_absolute_paths() -> None:
    settings = Settings()
    assert settings.var_dir == Path(os.getcwd()) / "var"
    assert settings.database_url == f"sqlite:///{os.getcwd()}/var/mailer.db"


def test_an_empty_config_file_is_all_defaults(project: Path) -> None:
    cfg = config.load(write(project, ""), env={})
    assert cfg.newsletters == {} and cfg.settings.concurrency == 10


@given(st.text(max_size=200))
def test_load_yaml_raises_nothing_but_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        yamlfile.load_yaml(text, file="x.yaml")
