"""The category pages: the fallback category, where topics matching no keyword go, cannot be deleted or re-slugged."""
from __future__ import annotations

import pytest
from django.urls import reverse

from topics.discovery import store_candidates
from topics.models import Category, Topic
from tests.topics.test_discovery import candidate

pytestmark = pytest.mark.django_db


def test_the_fallback_category_cannot_be_deleted_and_discovery_still_files_unmatched_topics(admin_client, categories):
    fallback = categories["platform_tools"]

    response = admin_client.post(reverse("admin:topics_category_delete", args=[fallback.pk]), {"post": "yes"})
    listed = admin_client.post(reverse("admin:topics_category_changelist"),
                               {"action": "delete_selected", "_selected_action": [fallback.pk], "post": "yes"})

    assert response.status_code == 403
    assert listed.status_code == 403
    assert Category.objects.filter(slug="platform_tools").exists()
    store_candidates(candidates=[candidate("Zebra quokka marzipan obsidian")], reports={})
    assert Topic.objects.get().category.slug == "platform_tools"


def test_the_fallback_categorys_slug_is_shown_but_not_editable(admin_client, categories):
    fallback = categories["platform_tools"]
    url = reverse("admin:topics_category_change", args=[fallback.pk])

    page = admin_client.get(url)
    admin_client.post(url, {"name": "Tools", "slug": "tools", "position": fallback.position,
                            "description": "", "keywords": fallback.keywords})

    assert 'name="slug"' not in page.content.decode()
    fallback.refresh_from_db()
    assert (fallback.name, fallback.slug) == ("Tools", "platform_tools")


def test_another_category_with_no_topics_can_still_be_deleted(admin_client, categories):
    other = categories["ads_marketing"]

    response = admin_client.post(reverse("admin:topics_category_delete", args=[other.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Category.objects.filter(pk=other.pk).exists()
