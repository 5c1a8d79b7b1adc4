"""What a statement's plan reads: its generic plan run with EXPLAIN ANALYZE, and the rows its scans of a table
read, for tests that hold a statement to reading what it needs and no more."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import sqlalchemy as sa


def generic_plan(engine: sa.Engine, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """EXPLAIN ANALYZE of `sql` (`%(name)s` or `:name` placeholders) on its generic plan, prepared with the
    parameter types psycopg gives it in service (read from a first execution, in a savepoint rolled back), in a
    transaction that is rolled back; the connection is closed after."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in names:
            names.append(name)
        return f"%({name})s"

    query = re.sub(r"%\((\w+)\)s|(?<![:\w]):(\w+)", number, sql)
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("SAVEPOINT prepared")
        cursor.execute(query, params, prepare=True)
        cursor.execute("SELECT statement, parameter_types::text[] FROM pg_prepared_statements"
                       " ORDER BY prepare_time DESC LIMIT 1")
        statement, types = cursor.fetchone()
        cursor.execute("ROLLBACK TO SAVEPOINT prepared")  # what it wrote; its prepared statement goes too
        assert len(types) == len(names)  # $n numbered by first appearance, as `names`
        cursor.execute(f"PREPARE probe ({', '.join(types)}) AS {statement}")
        arguments = ", ".join(f"%s::{type_}" for type_ in types)
        literal = psycopg.ClientCursor(conn.connection.dbapi_connection)  # a utility statement's arguments
        literal.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe({arguments})",
                        [params[name] for name in names])
        plan = literal.fetchone()[0][0]["Plan"]
        conn.invalidate()  # and the prepared statement with it
    return plan


def rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows the plan's scans of `table` produced or filtered away (each loop counted)."""
    read = 0
    if plan.get("Relation Name") == table:
        read += (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
                 + plan.get("Rows Removed by Index Recheck", 0)) * plan["Actual Loops"]
    return read + sum(rows_read(child, table) for child in plan.get("Plans", []))
