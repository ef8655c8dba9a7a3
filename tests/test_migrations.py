import asyncpg
import pytest

from fraudapp import store


async def test_migrations_built_the_core_tables(db: asyncpg.Connection) -> None:
    tables = {
        r["table_name"]
        for r in await db.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert {"transaction", "decision", "label", "simulation_truth", "list_entry"} <= tables
    assert await store.schema_revision(db) is not None


async def test_transaction_id_is_stored_once(db: asyncpg.Connection) -> None:
    insert = """
        INSERT INTO transaction (transaction_id, occurred_at, customer_id, terminal_id, amount,
                                 currency, channel, received_at)
        VALUES ('t1', now(), 'C1', 'T1', 10.5, 'EUR', 'online', now())
    """
    await db.execute(insert)
    with pytest.raises(asyncpg.UniqueViolationError, match="transaction_pkey"):
        await db.execute(insert)


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("amount", "-1", "transaction_amount_positive"),
        ("channel", "'fax'", "transaction_channel_known"),
        ("currency", "'euro'", "transaction_currency_iso"),
    ],
)
async def test_named_constraints_reject_bad_rows(
    db: asyncpg.Connection, column: str, value: str, constraint: str
) -> None:
    row = {
        "transaction_id": "'t2'",
        "occurred_at": "now()",
        "customer_id": "'C1'",
        "terminal_id": "'T1'",
        "amount": "1",
        "currency": "'EUR'",
        "channel": "'online'",
        "received_at": "now()",
    }
    row[column] = value
    with pytest.raises(asyncpg.CheckViolationError, match=constraint):
        await db.execute(
            f"INSERT INTO transaction ({', '.join(row)}) VALUES ({', '.join(row.values())})"
        )


async def test_migrations_revert_and_reapply(database_url: str) -> None:
    import asyncio

    await asyncio.to_thread(store.downgrade, database_url, revision="base")
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.transaction')") is None
    finally:
        await conn.close()
    await asyncio.to_thread(store.migrate, database_url)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.transaction')") is not None
    finally:
        await conn.close()
