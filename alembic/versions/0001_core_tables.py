"""Core tables: transaction, decision, label, simulation_truth, list_entry.

Shaped for batched COPY writes (few indexes, no triggers) and for the queries the API and the
dashboard make: by time (BRIN on the append-mostly timestamps), by customer and terminal, by
decision (a partial index over the rare review/decline rows). `decision` has no foreign key to
`transaction`: the writer stores both rows of a transaction in one database transaction, and the
per-row key lookup would cost about a tenth of the write path's throughput.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE transaction (
            transaction_id    text NOT NULL,
            occurred_at       timestamptz NOT NULL,
            customer_id       text NOT NULL,
            terminal_id       text NOT NULL,
            merchant_category text,
            amount            numeric(14, 2) NOT NULL,
            currency          text NOT NULL,
            channel           text NOT NULL,
            terminal_lat      double precision,
            terminal_lon      double precision,
            received_at       timestamptz NOT NULL,
            CONSTRAINT transaction_pkey PRIMARY KEY (transaction_id),
            CONSTRAINT transaction_amount_positive CHECK (amount > 0),
            CONSTRAINT transaction_channel_known CHECK (channel IN ('card_present', 'online')),
            CONSTRAINT transaction_currency_iso CHECK (currency ~ '^[A-Z]{3}$')
        )
        """
    )
    op.execute(
        "CREATE INDEX transaction_customer_time_idx ON transaction (customer_id, occurred_at DESC)"
    )
    op.execute(
        "CREATE INDEX transaction_terminal_time_idx ON transaction (terminal_id, occurred_at DESC)"
    )
    op.execute("CREATE INDEX transaction_occurred_brin ON transaction USING brin (occurred_at)")

    op.execute(
        """
        CREATE TABLE decision (
            transaction_id text NOT NULL,
            decided_at     timestamptz NOT NULL,
            probability    real NOT NULL,
            score          smallint NOT NULL,
            decision       text NOT NULL,
            rule           text,
            reasons        jsonb NOT NULL DEFAULT '[]',
            model_version  text NOT NULL,
            features       bytea,
            latency_ms     real NOT NULL,
            CONSTRAINT decision_pkey PRIMARY KEY (transaction_id),
            CONSTRAINT decision_score_range CHECK (score BETWEEN 0 AND 99),
            CONSTRAINT decision_probability_range CHECK (probability BETWEEN 0 AND 1),
            CONSTRAINT decision_decision_known
                CHECK (decision IN ('approve', 'review', 'decline')),
            CONSTRAINT decision_rule_known CHECK (rule IN ('block_list', 'allow_list'))
        )
        """
    )
    op.execute("CREATE INDEX decision_decided_brin ON decision USING brin (decided_at)")
    op.execute(
        "CREATE INDEX decision_alert_idx ON decision (decision, decided_at DESC) "
        "WHERE decision <> 'approve'"
    )

    op.execute(
        """
        CREATE TABLE label (
            label_id       bigint GENERATED ALWAYS AS IDENTITY,
            transaction_id text NOT NULL,
            is_fraud       boolean NOT NULL,
            source         text NOT NULL,
            labelled_by    text,
            known_at       timestamptz NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT label_pkey PRIMARY KEY (label_id),
            CONSTRAINT label_transaction_fkey FOREIGN KEY (transaction_id)
                REFERENCES transaction (transaction_id) ON DELETE CASCADE,
            CONSTRAINT label_source_known CHECK (source IN ('chargeback', 'analyst', 'import'))
        )
        """
    )
    op.execute("CREATE INDEX label_transaction_known_idx ON label (transaction_id, known_at DESC)")
    op.execute("CREATE INDEX label_known_brin ON label USING brin (known_at)")

    op.execute(
        """
        CREATE TABLE simulation_truth (
            transaction_id text NOT NULL,
            scenario       smallint NOT NULL,
            CONSTRAINT simulation_truth_pkey PRIMARY KEY (transaction_id),
            CONSTRAINT simulation_truth_scenario_range CHECK (scenario BETWEEN 1 AND 6)
        )
        """
    )

    op.execute(
        """
        CREATE TABLE list_entry (
            entry_id    bigint GENERATED ALWAYS AS IDENTITY,
            list        text NOT NULL,
            entity_type text NOT NULL,
            entity_id   text NOT NULL,
            reason      text NOT NULL,
            created_by  text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz,
            CONSTRAINT list_entry_pkey PRIMARY KEY (entry_id),
            CONSTRAINT list_entry_entity_key UNIQUE (entity_type, entity_id),
            CONSTRAINT list_entry_list_known CHECK (list IN ('block', 'allow')),
            CONSTRAINT list_entry_entity_type_known
                CHECK (entity_type IN ('customer', 'terminal'))
        )
        """
    )


def downgrade() -> None:
    for table in ("list_entry", "simulation_truth", "label", "decision", "transaction"):
        op.execute(f"DROP TABLE {table}")
