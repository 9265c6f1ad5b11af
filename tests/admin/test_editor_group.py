"""The 'Editor' group the data migration creates, and the desk entry points it opens."""
from __future__ import annotations

from django.contrib.auth.models import Group
from django.urls import reverse

EDITORIAL = {
    "topics.view_topic", "topics.change_topic", "topics.view_category", "topics.change_category",
    "batches.view_batch", "batches.run_batch", "batches.view_newsletter", "batches.change_newsletter",
    "batches.approve_newsletter", "batches.view_costledgerentry", "batches.view_modelprice",
    "topics.add_topic", "topics.view_discoveryrun",  # migration 0008: topics by hand, discovery runs
}


def test_the_editor_group_holds_exactly_the_editorial_permissions(db):
    group = Group.objects.get(name="Editor")
    held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
    assert held == EDITORIAL


def test_an_editor_may_run_batches_and_approve_drafts(editor):
    assert editor.has_perms(["batches.run_batch", "batches.approve_newsletter"])


def test_an_editor_may_neither_delete_nor_alter_spend_history(editor):
    assert not editor.has_perm("batches.delete_costledgerentry")
    assert not editor.has_perm("batches.change_costledgerentry")
    assert not editor.has_perm("batches.change_modelprice")
    assert not editor.has_perm("batches.delete_batch")


def test_the_admin_home_page_opens_the_desk_to_an_editor(editor_client):
    page = editor_client.get(reverse("admin:index")).content.decode()
    for name in ("batches_batch_run", "batches_costledgerentry_dashboard", "batches_batch_system_status"):
        assert f'href="{reverse(f"admin:{name}")}"' in page


def test_the_admin_home_page_offers_no_new_batch_without_the_permission(viewer_client):
    page = viewer_client.get(reverse("admin:index")).content.decode()
    assert 'id="desk-module"' in page
    assert reverse("admin:batches_batch_run") not in page


def test_the_desk_index_shows_what_waits_for_the_editor(editor_client, make_topic, make_batch):
    from batches.models import Batch

    make_topic("A new story", status="new")
    make_topic("Another new story", status="new")
    make_batch(["generated", "generated", "approved"], status=Batch.Status.DONE)
    make_batch(["generating"], status=Batch.Status.RUNNING)
    page = editor_client.get(reverse("admin:index")).content.decode()

    def row(name: str) -> str:
        start = page.index(f'id="desk-waiting-{name}"')
        return page[start:page.index("</tr>", start)]

    assert "<strong>2</strong> new" in row("topics")
    assert "<strong>2</strong> ready" in row("drafts")
    assert "<strong>1</strong> running" in row("batches")


def test_an_editor_sees_discovery_runs_and_can_add_a_topic_from_the_index(editor_client):
    page = editor_client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:topics_topic_add") in page and reverse("admin:topics_discoveryrun_changelist") in page
    assert editor_client.get(reverse("admin:topics_discoveryrun_changelist")).status_code == 200
