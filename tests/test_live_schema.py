"""cartd's Shopify GraphQL documents against the Admin API schemas of every version it
supports (2025-10 to 2026-10): valid, no deprecated field, and a requested cost that
Shopify's rules put under the single-query maximum at the page sizes cartd uses.

The derived schemas in `fixtures/shopify/` always serve; the full ones are checked too
when `../shared/reference/shopify/` is present (a fresh clone skips those)."""

from __future__ import annotations

import pytest
from graphql import parse, validate

from cartd.sources import shopify_live
from shopify_graphql import (
    VERSIONS,
    deprecated_uses,
    derived_introspection,
    full_introspection,
    full_schema,
    requested_cost,
    schema,
)

DOCUMENTS = [pytest.param(d, id=d.split("(")[0].split()[1]) for d in shopify_live.DOCUMENTS]
needs_full = pytest.mark.skipif(full_introspection(VERSIONS[0]) is None,
                                reason="the full schemas are in ../shared/reference/shopify/ only")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_document_is_valid_and_uses_nothing_deprecated(version, document):
    parsed = parse(document)
    assert validate(schema(version), parsed) == []
    assert deprecated_uses(schema(version), parsed) == []


def test_the_check_sees_deprecated_fields():
    old = parse("{ abandonedCheckouts(first: 1) { nodes { customer { email phone "
                "emailMarketingConsent { marketingState } } } } }")
    for version in VERSIONS:
        assert validate(schema(version), old) == []
        found = deprecated_uses(schema(version), old)
        assert [use.split(":")[0] for use in found] == [
            "Customer.email", "Customer.phone", "Customer.emailMarketingConsent"]


@needs_full
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_document_is_valid_against_the_full_schema(version, document):
    parsed = parse(document)
    assert validate(full_schema(version), parsed) == []
    assert deprecated_uses(full_schema(version), parsed) == []


@needs_full
@pytest.mark.parametrize("version", VERSIONS)
def test_the_derived_schemas_are_what_derive_py_makes_of_the_full_ones(version):
    from fixtures.shopify.derive import derive

    assert derived_introspection(version) == derive(full_introspection(version))


@pytest.mark.parametrize("version", VERSIONS)
def test_cartds_cost_formula_is_shopifys_count_over_the_schema(version):
    checkouts = parse(shopify_live.CHECKOUTS_QUERY)
    for first, lines in ((1, 0), (1, 1), (35, 5), (250, 50), (7, 13)):
        assert requested_cost(schema(version), checkouts, {"first": first, "lines": lines}) == (
            shopify_live.checkouts_cost(first, lines))
    lines_query = parse(shopify_live.LINES_QUERY)
    for first in (1, 100, 249):
        assert requested_cost(schema(version), lines_query, {"first": first}) == (
            shopify_live.lines_cost(first))


def test_pages_are_as_large_as_the_single_query_maximum_allows():
    lines = shopify_live.INLINE_LINES
    page, lines_page = shopify_live.CHECKOUTS_PAGE, shopify_live.LINES_PAGE
    assert shopify_live.checkouts_cost(page, lines) <= 1000 < shopify_live.checkouts_cost(
        page + 1, lines)
    assert shopify_live.lines_cost(lines_page) <= 1000 < shopify_live.lines_cost(lines_page + 1)
