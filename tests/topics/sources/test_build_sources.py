from __future__ import annotations

from types import SimpleNamespace

import pytest

from topics.sources import SOURCES, ApifySource, PerplexitySource, RedditSource, Source, TubeLabSource, build_sources


def test_it_builds_every_source_from_settings_free_ones_first() -> None:
    sources = build_sources(SimpleNamespace())

    assert [type(s) for s in sources] == [RedditSource, PerplexitySource, TubeLabSource, ApifySource]
    assert [(s.name, s.paid) for s in sources] == [
        ("reddit", False),
        ("perplexity", True),
        ("tubelab", True),
        ("apify", True),
    ]
    assert all(isinstance(s, Source) for s in sources)


def test_a_source_without_its_key_is_built_but_not_configured() -> None:
    settings = SimpleNamespace(PERPLEXITY_API_KEY="pplx-key", APIFY_TOKEN="")

    configured = {s.name: s.is_configured() for s in build_sources(settings)}

    assert configured == {"reddit": False, "perplexity": True, "tubelab": False, "apify": False}


def test_it_builds_only_the_sources_named_in_that_order() -> None:
    sources = build_sources(SimpleNamespace(), ["tubelab", "reddit"])

    assert [s.name for s in sources] == ["tubelab", "reddit"]


def test_an_unknown_source_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="Unknown source\\(s\\): twitter"):
        build_sources(SimpleNamespace(), ["reddit", "twitter"])


def test_each_source_describes_itself_in_one_line() -> None:
    for source in build_sources(SimpleNamespace()):
        line = source.describe()
        assert "\n" not in line
        assert line.startswith(
            {"reddit": "Reddit:", "perplexity": "Perplexity:", "tubelab": "TubeLab:", "apify": "Apify:"}[source.name]
        )


def test_the_registry_names_match_the_source_classes() -> None:
    assert all(cls.name == name for name, cls in SOURCES.items())
