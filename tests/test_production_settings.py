"""
The production settings (``VANILLA_DEBUG=0``), each check in a fresh process
as a deployment would start one: they pass ``manage.py check --deploy``, take
their secrets from the environment, and refuse to start with the development
secret key.
"""
import json
import os
import secrets
import subprocess
import sys

import pytest

from vanilla_site.settings import DEVELOPMENT_SECRET_KEY

from .processes import ROOT, free_port

KEY = secrets.token_urlsafe(50)
PRODUCTION = {
    "VANILLA_DEBUG": "0",
    "VANILLA_SECRET_KEY": KEY,
    "VANILLA_ALLOWED_HOSTS": "vanilla.example.org",
}


def run(argv, **env):
    """Run ``argv`` from the project root with only ``env`` set of Vanilla's."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("VANILLA_")
    }
    clean["DJANGO_SETTINGS_MODULE"] = "vanilla_site.settings"
    return subprocess.run(
        argv, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def manage(*args, **env):
    return run([sys.executable, "manage.py", *args], **env)


def test_production_settings_pass_check_deploy():
    """No deployment warning at all, not only no error."""
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_catches_a_weak_secret_key():
    """The check is not silenced: a short key fails it."""
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        **{**PRODUCTION, "VANILLA_SECRET_KEY": "short"},
    )

    assert result.returncode != 0 and "security.W009" in result.stderr


@pytest.mark.parametrize(
    "key", [DEVELOPMENT_SECRET_KEY, "", None], ids=["development key", "empty", "unset"]
)
def test_production_refuses_to_start_without_its_own_secret_key(key):
    env = {
        name: value
        for name, value in PRODUCTION.items()
        if name != "VANILLA_SECRET_KEY"
    }
    if key is not None:
        env["VANILLA_SECRET_KEY"] = key

    result = manage("check", **env)

    assert result.returncode != 0
    assert (
        "refusing to run in production with the development secret key" in result.stderr
    )


def test_daphne_refuses_to_start_with_the_development_key():
    """The server itself exits at once rather than serve with a public key."""
    env = {"VANILLA_DEBUG": "0", "VANILLA_SECRET_KEY": DEVELOPMENT_SECRET_KEY}

    result = run(
        [
            sys.executable,
            "-m",
            "pubsub.server",
            "-b",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "vanilla_site.asgi:application",
        ],
        **env,
    )

    assert result.returncode != 0
    assert "development secret key" in result.stderr


def test_secrets_come_from_the_environment():
    """The secret key, the database password and the Redis URL are the environment's."""
    env = {
        **PRODUCTION,
        "VANILLA_DB_PASSWORD": "db-" + secrets.token_hex(8),
        "VANILLA_REDIS_URL": f"redis://:{secrets.token_hex(8)}@redis.internal:6379/0",
    }
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.SECRET_KEY, s.DATABASES['default']['PASSWORD'], "
        "s.REDIS_URL, s.CELERY_BROKER_URL, s.DEBUG]))"
    )

    result = run([sys.executable, "-c", code], **env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        KEY,
        env["VANILLA_DB_PASSWORD"],
        env["VANILLA_REDIS_URL"],
        env["VANILLA_REDIS_URL"],
        False,
    ]
