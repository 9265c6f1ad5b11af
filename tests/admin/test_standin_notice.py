"""Every desk page says plainly when drafts come from the local stand-in instead of Claude."""
from __future__ import annotations

import pytest
from django.urls import reverse

PAGES = ["admin:index", "admin:topics_topic_changelist", "admin:batches_batch_changelist",
         "admin:batches_batch_run", "admin:batches_newsletter_changelist", "admin:batches_batch_system_status"]


@pytest.mark.parametrize("page", PAGES)
def test_with_the_stand_in_in_use_every_desk_page_says_drafts_do_not_come_from_claude(editor_client, settings, page):
    settings.CLAUDE_STANDIN = True
    html = editor_client.get(reverse(page)).content.decode()
    notice = html[html.index('id="desk-standin"'):html.index("</div>", html.index('id="desk-standin"'))]
    assert "Drafts come from a local stand-in, not Claude." in notice
    assert "ANTHROPIC_API_KEY" in notice and "make serve" in notice


def test_with_a_key_no_page_mentions_a_stand_in(editor_client, settings):
    settings.CLAUDE_STANDIN = False
    for page in PAGES:
        assert 'id="desk-standin"' not in editor_client.get(reverse(page)).content.decode()
