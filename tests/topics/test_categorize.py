from __future__ import annotations

import pytest

from topics.categorize import KeywordTable, categorize_text, recategorize
from topics.models import Category, Topic

pytestmark = pytest.mark.django_db


def pick(text: str) -> str:
    return categorize_text(text=text, categories=list(Category.objects.all())).slug


def test_it_picks_the_category_whose_keywords_match_most(categories):
    # two shipping keywords (usps, carrier) against one pricing keyword (margin)
    assert pick("USPS picks a new carrier and sellers watch their margin") == "shipping_logistics"


def test_it_matches_keywords_case_insensitively(categories):
    assert pick("KLAVIYO EMAIL FLOW TEARDOWN") == "customer_retention"


def test_it_matches_keywords_inside_the_summary(categories):
    topic_text = "A quiet week\nOur Alibaba supplier finally shipped the samples"
    assert pick(topic_text) == "product_sourcing"


def test_it_counts_each_keyword_once_however_often_it_occurs(categories):
    # "inventory" three times is one match; "tariff" and "margin" are two
    assert pick("inventory inventory inventory: a tariff eats the margin") == "pricing_margins"


def test_it_breaks_a_tie_by_category_order(categories):
    text = "The tariff hits checkout"  # one pricing keyword, one conversion keyword
    assert pick(text) == "pricing_margins"

    Category.objects.filter(slug="conversion_optimization").update(position=0)
    Category.objects.filter(slug="pricing_margins").update(position=5)

    assert pick(text) == "conversion_optimization"


def test_it_falls_back_to_platform_tools_when_no_keyword_matches(categories):
    assert pick("A completely unrelated headline about the weather") == "platform_tools"


def test_with_the_fallback_category_gone_a_text_matching_no_keyword_goes_to_the_first_category(categories, caplog):
    Category.objects.filter(slug="platform_tools").delete()  # outside the admin, which refuses it
    first = Category.objects.order_by("position", "pk").first()

    assert pick("A completely unrelated headline about the weather") == first.slug
    assert "the fallback category 'platform_tools' is missing" in caplog.text


def test_it_uses_keywords_an_editor_added(categories):
    assert pick("Holiday gift guides are back") == "platform_tools"

    ads = categories["ads_marketing"]
    ads.keywords += "\ngift guide"
    ads.save()

    assert pick("Holiday gift guides are back") == "ads_marketing"


def test_it_moves_topics_whose_keywords_now_point_elsewhere(make_topic, categories):
    topic = make_topic("Holiday gift guides are back")
    assert topic.category.slug == "platform_tools"
    ads = categories["ads_marketing"]
    ads.keywords += "\ngift guide"
    ads.save()

    changed = recategorize(topics=Topic.objects.all())

    topic.refresh_from_db()
    assert (changed, topic.category.slug) == (1, "ads_marketing")


def test_it_reports_only_the_topics_it_changed(make_topic):
    make_topic("USPS raises parcel rates")
    make_topic("Klaviyo email flow teardown")

    assert recategorize(topics=Topic.objects.all()) == 0


def test_it_locks_a_category_an_editor_chose(make_topic, categories):
    topic = make_topic("USPS raises parcel rates")

    topic.override_category(categories["pricing_margins"])

    topic.refresh_from_db()
    assert (topic.category.slug, topic.category_locked) == ("pricing_margins", True)


def test_it_never_undoes_an_editors_category_choice(make_topic, categories):
    topic = make_topic("USPS raises parcel rates for every carrier")
    topic.override_category(categories["pricing_margins"])

    changed = recategorize(topics=Topic.objects.all())

    topic.refresh_from_db()
    assert (changed, topic.category.slug) == (0, "pricing_margins")


def test_it_recategorizes_unlocked_topics_next_to_locked_ones(make_topic, categories):
    locked = make_topic("USPS raises parcel rates")
    locked.override_category(categories["pricing_margins"])
    unlocked = make_topic("USPS raises parcel rates again", category="pricing_margins")

    recategorize(topics=Topic.objects.all())

    locked.refresh_from_db()
    unlocked.refresh_from_db()
    assert (locked.category.slug, unlocked.category.slug) == ("pricing_margins", "shipping_logistics")


def test_a_keyword_table_reads_each_categorys_keywords_once_however_many_texts_it_categorises(
    categories, keyword_reads
):
    table = KeywordTable(list(Category.objects.all()))
    picked = [table.categorize(text).slug for text in ["USPS raises parcel rates", "Klaviyo email flow"] * 50]

    assert sorted(keyword_reads) == sorted(categories)
    assert picked[:2] == ["shipping_logistics", "customer_retention"]


def test_a_keyword_table_picks_what_categorize_text_picks(categories):
    table = KeywordTable(list(categories.values()))
    texts = ["The tariff hits checkout", "A completely unrelated headline", "inventory, inventory: tariffs eat margin"]

    assert [table.categorize(text).slug for text in texts] == [pick(text) for text in texts]
