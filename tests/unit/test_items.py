"""The one deadline check every stage asks of an item."""

from __future__ import annotations

from deployments.items import Item, Options


def _item(deadline: float | None) -> Item:
    return Item(item_id="i", request_id="r", data=b"", options=Options.of({}), deadline=deadline)


def test_an_item_expires_at_its_deadline_not_before() -> None:
    assert not _item(100.0).expired(99.999)
    assert _item(100.0).expired(100.0)
    assert _item(100.0).expired(100.001)


def test_an_item_without_a_deadline_never_expires() -> None:
    assert not _item(None).expired(1e12)
