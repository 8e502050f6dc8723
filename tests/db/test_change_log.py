"""A replica's index follows the change log; a prune that lands while the log is being read must not hide changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select

from tests.api.helpers import enroll, make_tenant, meta


def test_a_follower_whose_log_was_pruned_while_it_read_rebuilds(client):
    from app.db.tables import GalleryChange, GalleryHead, GalleryItem, Tenant

    _, key = make_tenant(client, "follower")
    ids = enroll(client, key, [1, 2, 3, 4], [meta("c1")] * 4).json()["ids"]
    state = client.app.state.reid
    with state.sessions() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "follower"))
    index = state.indexes.get(tenant_id)
    cursor = index.cursor
    with state.sessions() as session:  # another replica erases a record: row, log row, head; this index has not seen it
        session.execute(delete(GalleryItem).where(GalleryItem.id == ids[0]))
        seq = session.scalar(
            insert(GalleryChange).returning(GalleryChange.seq), {"tenant_id": tenant_id, "item_id": ids[0], "op": "del", "at": datetime.now(UTC)}
        )
        head = session.get(GalleryHead, tenant_id)
        head.seq = seq
        session.commit()
    state.gallery.prune_change_log(datetime.now(UTC) + timedelta(minutes=1))  # that log row is gone; pruned_seq passes the cursor
    # what a follower that checked pruned_seq just before the prune would read next: a log without the erasure
    assert state.gallery._apply_log(index, set()) is False
    assert index.cursor == cursor and ids[0] in {int(i) for i in index.ids()}
    state.gallery._rebuild_and_apply(index)
    assert {int(i) for i in index.ids()} == set(ids[1:]) and index.cursor >= seq
