"""A replica's index follows the change log; a prune that lands while the log is being read must not hide changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, event, insert, select

from tests.api.helpers import enroll, make_tenant, meta


def test_a_follower_whose_log_is_pruned_while_it_reads_rebuilds(client):
    """The follower checks pruned_seq, then reads the log. Here a prune commits just before that read (on another
    connection), removing the erasure's log row: the follower must notice and rebuild, not skip the erasure."""
    from app.db.tables import GalleryChange, GalleryHead, GalleryItem, Tenant

    _, key = make_tenant(client, "follower")
    ids = enroll(client, key, [1, 2, 3, 4], [meta("c1")] * 4).json()["ids"]
    state = client.app.state.reid
    with state.sessions() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "follower"))
    index = state.indexes.get(tenant_id)
    fired: list[str] = []

    def prune_just_before_the_log_is_read(conn, cursor, statement, parameters, context, executemany):
        if not fired and "FROM gallery_changes" in statement and statement.lstrip().upper().startswith("SELECT"):
            fired.append(statement)
            state.gallery.prune_change_log(datetime.now(UTC) + timedelta(minutes=1))  # its own session and connection

    with index.sync_lock:  # the app's own follower waits: this test plays it
        cursor = index.cursor
        with state.sessions() as session:  # another replica erases a record: row, log row, head
            session.execute(delete(GalleryItem).where(GalleryItem.id == ids[0]))
            seq = session.scalar(
                insert(GalleryChange).returning(GalleryChange.seq), {"tenant_id": tenant_id, "item_id": ids[0], "op": "del", "at": datetime.now(UTC)}
            )
            session.get(GalleryHead, tenant_id).seq = seq
            session.commit()
        event.listen(state.engine, "before_cursor_execute", prune_just_before_the_log_is_read)
        try:
            assert state.gallery._apply_log(index, set()) is False  # the log it read had lost the erasure
        finally:
            event.remove(state.engine, "before_cursor_execute", prune_just_before_the_log_is_read)
        assert fired and index.cursor == cursor and ids[0] in {int(i) for i in index.ids()}
        state.gallery._rebuild_and_apply(index)
        assert {int(i) for i in index.ids()} == set(ids[1:]) and index.cursor >= seq
