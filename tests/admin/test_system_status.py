"""The system status page: the preflight checks in the admin, never a secret."""
from __future__ import annotations

from django.contrib.auth.models import User
from django.urls import reverse

from batches.preflight import run_checks
from tests.admin.conftest import csrf_client

STATUS = reverse("admin:batches_batch_system_status")
SECRET = "sk-ant-api03-VERY-SECRET-never-shown-4f2a"


def test_the_status_page_shows_every_preflight_check(editor_client, settings, broker_down):
    settings.ANTHROPIC_API_KEY = SECRET
    response = editor_client.get(STATUS)
    assert response.status_code == 200
    page = response.content.decode()
    names = [check.name for check in run_checks(worker=True)]
    assert [check.name for check in response.context["checks"]] == names
    for name in ("ANTHROPIC_API_KEY", "database", "categories", "price", "budget", "broker", "worker"):
        assert f"<code>{name}</code>" in page


def test_the_status_page_never_shows_a_secret(editor_client, settings, broker_down):
    settings.ANTHROPIC_API_KEY = SECRET
    settings.PERPLEXITY_API_KEY = "pplx-another-secret-value-9d1c"
    page = editor_client.get(STATUS).content.decode()
    assert SECRET not in page and SECRET[:-4] not in page
    assert "pplx-another-secret-value" not in page
    assert "…4f2a" in page


def test_the_status_page_says_when_a_live_batch_cannot_run(editor_client, settings, broker_down):
    settings.ANTHROPIC_API_KEY = ""
    response = editor_client.get(STATUS)
    assert response.context["ready"] is False
    assert "Not ready for a live batch" in response.content.decode()


def test_the_status_page_needs_permission_to_view_batches(db):
    outsider = User.objects.create_user("outsider", password="x", is_staff=True)
    assert csrf_client(outsider).get(STATUS).status_code == 403
