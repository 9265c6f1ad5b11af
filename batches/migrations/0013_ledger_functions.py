"""The ledger's two hot paths as PostgreSQL functions (issue 12).

A reservation and a settlement each become one statement, so each costs one round trip and one commit instead
of a statement per row: the budget rows a reservation locks are held for no longer than the function runs. The
rules are those of batches.ledger's SQLite path, which the same tests run against (see batches.ledger).
SQLite gets nothing here.
"""
from django.db import migrations

RESERVE = r"""
CREATE OR REPLACE FUNCTION newsroom_ledger_reserve(
    p_key varchar, p_created timestamptz, p_provider varchar, p_model varchar, p_description varchar,
    p_batch bigint, p_newsletter bigint, p_amount numeric, p_month varchar, p_cap numeric,
    OUT out_entry bigint, OUT out_refused varchar, OUT out_spent numeric, OUT out_limit numeric)
LANGUAGE plpgsql AS $fn$
DECLARE
    given_back numeric;
BEGIN
    -- The month's row first, then the batch's: the one lock order, so two reservations never wait in a cycle.
    -- A tally read here may be a moment old: the total then looks higher than it is, never lower.
    UPDATE batches_monthlyspend m SET total_usd = m.total_usd + p_amount, reserved_usd = m.reserved_usd + p_amount
     WHERE m.month = p_month
       AND (p_cap IS NULL OR ROUND(m.total_usd + COALESCE((SELECT SUM(t.total_usd) FROM batches_ledgertally t
                                                          WHERE t.scope = 'month:' || p_month), 0) + p_amount, 6)
                              <= p_cap);
    IF NOT FOUND THEN
        -- Refused, or no row: look again with the row locked, so a refusal is exact.
        SELECT m.total_usd INTO out_spent FROM batches_monthlyspend m WHERE m.month = p_month FOR UPDATE;
        IF NOT FOUND THEN
            out_refused := 'month row missing';
            RETURN;
        END IF;
        SELECT COALESCE(SUM(t.total_usd), 0) INTO given_back FROM batches_ledgertally t
         WHERE t.scope = 'month:' || p_month;
        out_spent := out_spent + given_back;
        IF out_spent + p_amount > p_cap THEN
            out_refused := 'month';
            out_limit := p_cap;
            RETURN;
        END IF;
        UPDATE batches_monthlyspend m SET total_usd = m.total_usd + p_amount, reserved_usd = m.reserved_usd + p_amount
         WHERE m.month = p_month;
    END IF;
    IF p_batch IS NOT NULL THEN
        UPDATE batches_batch b SET ledger_total_usd = b.ledger_total_usd + p_amount,
                                   reserved_open_usd = b.reserved_open_usd + p_amount
         WHERE b.id = p_batch
           AND ROUND(b.ledger_total_usd + COALESCE((SELECT SUM(t.total_usd) FROM batches_ledgertally t
                                                    WHERE t.scope = 'batch:' || p_batch), 0) + p_amount, 6)
               <= b.budget_usd;
        IF NOT FOUND THEN
            SELECT b.ledger_total_usd, b.budget_usd INTO out_spent, out_limit FROM batches_batch b
             WHERE b.id = p_batch FOR UPDATE;
            SELECT COALESCE(SUM(t.total_usd), 0) INTO given_back FROM batches_ledgertally t
             WHERE t.scope = 'batch:' || p_batch;
            out_spent := out_spent + given_back;
            IF out_spent + p_amount > out_limit THEN
                -- give the month back what was taken from it above: nothing of this call stays
                UPDATE batches_monthlyspend m SET total_usd = m.total_usd - p_amount,
                                                  reserved_usd = m.reserved_usd - p_amount
                 WHERE m.month = p_month;
                out_refused := 'batch';
                RETURN;
            END IF;
            UPDATE batches_batch b SET ledger_total_usd = b.ledger_total_usd + p_amount,
                                       reserved_open_usd = b.reserved_open_usd + p_amount
             WHERE b.id = p_batch;
        END IF;
    END IF;
    -- A key reserved before raises unique_violation here, which undoes the whole statement.
    INSERT INTO batches_costledgerentry (idempotency_key, created_at, provider, model, description, batch_id,
                                         newsletter_id, status, reserved_usd, amount_usd, input_tokens,
                                         output_tokens, cache_write_tokens, cache_read_tokens, request_id, note)
    VALUES (p_key, p_created, p_provider, p_model, p_description, p_batch, p_newsletter, 'reserved', p_amount,
            p_amount, 0, 0, 0, 0, '', '')
    RETURNING id INTO out_entry;
END
$fn$;
"""

CLOSE = r"""
CREATE OR REPLACE FUNCTION newsroom_ledger_close(
    p_entry bigint, p_status varchar, p_actual numeric, p_usage_missing boolean, p_input integer,
    p_output integer, p_cache_write integer, p_cache_read integer, p_request varchar, p_now timestamptz,
    p_slot integer, p_zone varchar,
    OUT out_closed boolean, OUT out_reserved numeric, OUT out_amount numeric, OUT out_note varchar,
    OUT out_month varchar, OUT out_month_missing boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    e record;
    beyond numeric;
BEGIN
    SELECT c.reserved_usd, c.status, c.batch_id, c.created_at INTO e FROM batches_costledgerentry c
     WHERE c.id = p_entry FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no ledger entry %', p_entry USING ERRCODE = 'no_data_found';
    END IF;
    out_closed := e.status = 'reserved';
    out_reserved := e.reserved_usd;
    out_month_missing := false;
    IF NOT out_closed THEN
        RETURN;  -- settled or released already: nothing changes twice
    END IF;
    out_amount := CASE WHEN p_usage_missing THEN e.reserved_usd ELSE p_actual END;
    out_note := CASE WHEN p_usage_missing THEN 'usage_missing' WHEN out_amount > e.reserved_usd THEN 'overrun'
                     ELSE '' END;
    UPDATE batches_costledgerentry c SET status = p_status, amount_usd = out_amount, settled_at = p_now,
           input_tokens = p_input, output_tokens = p_output, cache_write_tokens = p_cache_write,
           cache_read_tokens = p_cache_read, request_id = p_request, note = out_note
     WHERE c.id = p_entry;
    beyond := out_amount - e.reserved_usd;
    out_month := to_char(e.created_at AT TIME ZONE p_zone, 'YYYY-MM');
    -- What is given back goes on this process's tally slots (month, then batch), no budget row locked.
    INSERT INTO batches_ledgertally AS t (scope, slot, total_usd, reserved_usd)
    VALUES ('month:' || out_month, p_slot, LEAST(beyond, 0), -e.reserved_usd)
    ON CONFLICT (scope, slot) DO UPDATE SET total_usd = t.total_usd + EXCLUDED.total_usd,
                                            reserved_usd = t.reserved_usd + EXCLUDED.reserved_usd;
    IF e.batch_id IS NOT NULL THEN
        INSERT INTO batches_ledgertally AS t (scope, slot, total_usd, reserved_usd)
        VALUES ('batch:' || e.batch_id, p_slot, LEAST(beyond, 0), -e.reserved_usd)
        ON CONFLICT (scope, slot) DO UPDATE SET total_usd = t.total_usd + EXCLUDED.total_usd,
                                                reserved_usd = t.reserved_usd + EXCLUDED.reserved_usd;
    END IF;
    IF beyond > 0 THEN
        -- An overrun adds: it goes on the budget rows, under their locks, and stops the batch.
        UPDATE batches_monthlyspend m SET total_usd = m.total_usd + beyond WHERE m.month = out_month;
        out_month_missing := NOT FOUND;
        IF e.batch_id IS NOT NULL THEN
            UPDATE batches_batch b SET ledger_total_usd = b.ledger_total_usd + beyond, budget_stopped = true,
                                       overrun_usd = b.overrun_usd + beyond
             WHERE b.id = e.batch_id;
        END IF;
    END IF;
END
$fn$;
"""

DROP = """
DROP FUNCTION IF EXISTS newsroom_ledger_reserve(varchar, timestamptz, varchar, varchar, varchar, bigint, bigint,
                                                numeric, varchar, numeric);
DROP FUNCTION IF EXISTS newsroom_ledger_close(bigint, varchar, numeric, boolean, integer, integer, integer, integer,
                                              varchar, timestamptz, integer, varchar);
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(RESERVE, params=None)  # no parameters: the % in the functions stay as written
        schema_editor.execute(CLOSE, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("batches", "0012_ledger_tallies")]

    operations = [migrations.RunPython(create, drop)]
