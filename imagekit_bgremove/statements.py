"""Statements built once and run on every save, webhook and job move, where the ORM's compilation
of a query cost more than the query itself. Each mirrors what the ORM would do for the same
call (the callers fall back to the ORM where a call does not fit); they know nothing of the
app's models beyond what they are given."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

import django
from django.db import connections, models, router
from django.db.models.expressions import RawSQL
from django.db.models.fields import NOT_PROVIDED

_PEEKS: dict[tuple[str, str, tuple[str, ...]], str] = {}
_TRANSITIONS: dict[tuple[Any, ...], tuple[str, list[Any], list[Any]]] = {}
_COLUMN_UPDATES: dict[tuple[str, str, str], str] = {}
_NEXT_IDS: dict[tuple[str, str], NextId] = {}
_NEW_ROW_PLANS: dict[tuple[str, str, tuple[str, ...]], _NewRowPlan] = {}

M = TypeVar("M", bound=models.Model)


def next_id(connection: Any, model: type[models.Model]) -> models.Expression | None:
    """An expression drawing the next id of ``model`` from its sequence, for an INSERT of
    another row to write a foreign key to a row written later in the same transaction, or None
    where ids cannot be drawn ahead: only PostgreSQL has a sequence to draw from, and only
    Django 6 reads back a value an INSERT computed."""
    if connection.vendor != "postgresql" or django.VERSION < (6, 0):
        return None
    key = (connection.alias, model._meta.label)
    if key not in _NEXT_IDS:
        # One per model and database: the compiler resolves a copy for each INSERT.
        opts = model._meta
        _NEXT_IDS[key] = NextId(
            "nextval(pg_get_serial_sequence(%s, %s))",
            [connection.ops.quote_name(opts.db_table), opts.pk.column],
            output_field=models.BigIntegerField(),
        )
    return _NEXT_IDS[key]


class NextId(RawSQL):
    """``next_id``'s expression (a class of its own, so a second ``pre_save`` recognises it)."""


@contextmanager
def hot_cursor(connection: Any) -> Iterator[Any]:
    """A cursor for the statements every save with the field runs.

    On PostgreSQL with psycopg 3 the parameters are bound on the server, in an unnamed statement
    (never a named prepared one, so it is safe behind pgbouncer): Django's default client-side
    binding renders every value into the SQL text, which PostgreSQL then parses, and for the
    job's forty columns that was half the cost of the save. Elsewhere it is a usual cursor.
    The statements still pass through Django's cursor wrapper (query logging, debug)."""
    if connection.vendor != "postgresql" or not _PSYCOPG3:
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.ensure_connection()
    raw = _ServerBoundCursor(connection.connection)
    wrapped = (
        connection.make_debug_cursor(raw)
        if connection.queries_logged
        else connection.make_cursor(raw)
    )
    with wrapped as cursor:
        yield cursor


try:
    import psycopg

    class _ServerBoundCursor(psycopg.Cursor):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs["prepare"] = False
            return super().execute(query, params, **kwargs)

    _PSYCOPG3 = True
except ImportError:  # psycopg2, or no PostgreSQL driver at all
    _PSYCOPG3 = False


def insert_row(obj: models.Model, *, using: str | None = None) -> models.Model:
    """INSERT ``obj`` (one of this app's rows, built beforehand) with every column bound, by the
    statement ``insert_new`` builds for the same columns; the hot paths' replacement for
    ``save(force_insert=True)``, whose compilation cost more than the statement. No signals
    are sent."""
    model = type(obj)
    alias = using or router.db_for_write(model)
    fields = [f for f in model._meta.concrete_fields if obj.pk is not None or not f.primary_key]
    plan, row, _ = _write_row(
        connections[alias], model, {f.attname: f.pre_save(obj, True) for f in fields}
    )
    obj.pk = row[plan.pk_index]
    obj._state.adding = False
    obj._state.db = alias
    return obj


def insert_new(model: type[M], values: Mapping[str, Any], *, using: str | None = None) -> M:
    """INSERT a new row of ``model`` from ``values`` (field names to values; a foreign key by
    its saved related object or its key) with every other column at its field's default, and
    return the saved instance, its related objects cached. For models of plain fields: no
    ``auto_now``, ``db_default`` or foreign key to a field other than a primary key (refused).

    The save path's insert: building the job with ``Model(**kwargs)`` and then reading its
    forty fields back for the parameters cost more than the INSERT itself. Here the statement
    writes the defaults as literals, only the given values are bound, and the instance is built
    positionally, as Django builds the rows it reads."""
    alias = using or router.db_for_write(model)
    _, row, related = _write_row(connections[alias], model, values)
    obj = model(*row)
    obj._state.adding = False
    obj._state.db = alias
    for field, value in related:
        field.set_cached_value(obj, value)
    return obj


def _write_row(
    connection: Any, model: type[models.Model], values: Mapping[str, Any]
) -> tuple[_NewRowPlan, list[Any], list[tuple[models.Field, models.Model]]]:
    """Run the INSERT of ``values``; the plan, the row as stored (in concrete field order, the
    primary key included) and the related objects that were given."""
    plan = _new_row_plan(connection, model, tuple(values))
    row = list(plan.defaults)
    params = []
    related = []
    for (index, field), value in zip(plan.given, values.values(), strict=True):
        if isinstance(value, models.Model):
            if value.pk is None:
                raise ValueError(f"{field.name}: the {type(value).__name__} is not saved yet.")
            related.append((field, value))
            value = value.pk
        row[index] = value
        params.append(field.get_db_prep_save(value, connection))
    for index, field in plan.called:
        row[index] = field.get_default()
        params.append(field.get_db_prep_save(row[index], connection))
    with hot_cursor(connection) as cursor:
        cursor.execute(plan.sql, params)
        if plan.returns_pk:
            if connection.features.can_return_columns_from_insert:
                row[plan.pk_index] = cursor.fetchone()[0]
            else:
                table, column = model._meta.db_table, model._meta.pk.column
                row[plan.pk_index] = connection.ops.last_insert_id(cursor, table, column)
    return plan, row, related


class _NewRowPlan(NamedTuple):
    sql: str
    given: list[tuple[int, models.Field]]  # position in the row, field; in the caller's order
    called: list[tuple[int, models.Field]]  # defaults that are callables: called per row
    defaults: list[Any]  # the row as built from the literal defaults
    returns_pk: bool
    pk_index: int


def _new_row_plan(
    connection: Any, model: type[models.Model], names: tuple[str, ...]
) -> _NewRowPlan:
    key = (connection.alias, model._meta.label, names)
    if key in _NEW_ROW_PLANS:
        return _NEW_ROW_PLANS[key]
    opts = model._meta
    quote = connection.ops.quote_name
    fields = list(opts.concrete_fields)
    special = [f.name for f in fields if _not_plain(f)]
    if special:
        raise ValueError(
            f"insert_new writes plain fields only; {opts.label} has {', '.join(special)} "
            "(auto_now, db_default or a foreign key to a field other than the primary key)."
        )
    given = [(fields.index(opts.get_field(n)), opts.get_field(n)) for n in names]
    given_fields = {f for _, f in given}
    called: list[tuple[int, models.Field]] = []
    literals: list[tuple[models.Field, str]] = []
    defaults: list[Any] = []
    for i, field in enumerate(fields):
        computed = field.has_default() and callable(field.default)
        default = None if computed else field.get_default()
        defaults.append(default)
        if field in given_fields or (field.primary_key and not field.has_default()):
            continue  # given, or an id the database assigns
        literal = None if computed else _literal(field, default)
        if literal is None:
            called.append((i, field))
        else:
            literals.append((field, literal))
    # Bound in this order: the given values, then the defaults computed per row.
    bound = [f for _, f in given] + [f for _, f in called]
    columns = [quote(f.column) for f in bound] + [quote(f.column) for f, _ in literals]
    slots = ["%s"] * len(bound) + [literal for _, literal in literals]
    pk_index = fields.index(opts.pk)
    returns_pk = opts.pk not in given_fields
    sql = (
        f"INSERT INTO {quote(opts.db_table)} ({', '.join(columns)}) "  # noqa: S608 - our names
        f"VALUES ({', '.join(slots)})"
    )
    if returns_pk and connection.features.can_return_columns_from_insert:
        sql += f" RETURNING {quote(opts.pk.column)}"
    plan = _NewRowPlan(sql, given, called, defaults, returns_pk, pk_index)
    _NEW_ROW_PLANS[key] = plan
    return plan


def _not_plain(field: models.Field) -> bool:
    """A field whose value on INSERT is not simply what it is given or its default."""
    return (
        getattr(field, "auto_now", False)
        or getattr(field, "auto_now_add", False)
        or getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED
        or (field.is_relation and field.target_field != field.related_model._meta.pk)
    )


def _literal(field: models.Field, value: Any) -> str | None:
    """A default as SQL text, where it reads the same on every database (NULL, an integer, an
    empty string in a text column), else None: bound like a given value."""
    if value is None:
        return "NULL"
    if type(value) is int and isinstance(field, models.IntegerField):
        return str(value)
    if value == "" and isinstance(field, models.CharField | models.TextField):
        return "''"
    return None


def select_with_waiters(
    connection: Any,
    model: type[models.Model],
    pk: Any,
    field_names: tuple[str, ...],
    *,
    waiting: str,
) -> tuple[Any, ...] | None:
    """Row ``pk``'s primary key and ``field_names``, and last whether any row names it in
    ``duplicate_of`` with status ``waiting``; None if there is no such row."""
    key = (connection.alias, model._meta.label, field_names)
    if key not in _PEEKS:
        quote = connection.ops.quote_name
        opts = model._meta
        table = quote(opts.db_table)
        pk_column = quote(opts.pk.column)
        columns = ", ".join(f"j.{quote(opts.get_field(n).column)}" for n in field_names)
        duplicate_of = quote(opts.get_field("duplicate_of").column)
        _PEEKS[key] = (
            f"SELECT j.{pk_column}, {columns}, EXISTS ("  # noqa: S608 - our own names, quoted
            f"SELECT 1 FROM {table} w WHERE w.{duplicate_of} = j.{pk_column} "
            f"AND w.{quote(opts.get_field('status').column)} = %s) FROM {table} j "
            f"WHERE j.{pk_column} = %s"
        )
    with hot_cursor(connection) as cursor:
        cursor.execute(_PEEKS[key], [waiting, pk])
        return cursor.fetchone()


def update_where(
    connection: Any,
    model: type[models.Model],
    pk: Any,
    sources: list[str],
    target: str,
    lease: int | None,
    expect: Mapping[str, Any],
    changes: dict[str, Any],
) -> bool:
    """``UPDATE ... SET status = target, <changes> WHERE pk AND status IN sources [AND
    lease_token = lease] [AND <field> = <value> for expect]``; whether a row moved. The values
    must be plain (no models, expressions or expected NULLs: the ORM's job)."""
    key = (connection.alias, model._meta.label, tuple(changes), len(sources), lease is not None)
    key += (tuple(expect),)
    if key not in _TRANSITIONS:
        opts = model._meta
        quote = connection.ops.quote_name
        set_fields = [opts.get_field(name) for name in changes]
        where_fields = [opts.get_field(name) for name in expect]
        status = quote(opts.get_field("status").column)
        lease_column = quote(opts.get_field("lease_token").column)
        sql = (
            f"UPDATE {quote(opts.db_table)} SET {status} = %s"  # noqa: S608
            + "".join(f", {quote(f.column)} = %s" for f in set_fields)
            + f" WHERE {quote(opts.pk.column)} = %s"
            + f" AND {status} IN ({', '.join(['%s'] * len(sources))})"
            + (f" AND {lease_column} = %s" if lease is not None else "")
            + "".join(f" AND {quote(f.column)} = %s" for f in where_fields)
        )
        _TRANSITIONS[key] = (sql, set_fields, where_fields)
    sql, set_fields, where_fields = _TRANSITIONS[key]
    params: list[Any] = [target]
    new_values = zip(set_fields, changes.values(), strict=True)
    params += [f.get_db_prep_save(v, connection) for f, v in new_values]
    params += [pk, *sources]
    if lease is not None:
        params.append(lease)
    expected = zip(where_fields, expect.values(), strict=True)
    params += [f.get_db_prep_value(v, connection) for f, v in expected]
    with hot_cursor(connection) as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount > 0


def update_column(connection: Any, field: models.Field, pk: Any, value: Any) -> None:
    """``UPDATE <field's table> SET <field> = value WHERE pk = pk``; the table is the one that
    holds ``field`` (a multi-table child's parent, for a field it inherits)."""
    opts = field.model._meta
    key = (connection.alias, opts.label, field.column)
    if key not in _COLUMN_UPDATES:
        quote = connection.ops.quote_name
        _COLUMN_UPDATES[key] = (
            f"UPDATE {quote(opts.db_table)} SET {quote(field.column)} = %s "  # noqa: S608
            f"WHERE {quote(opts.pk.column)} = %s"
        )
    params = [field.get_db_prep_save(value, connection), opts.pk.get_db_prep_value(pk, connection)]
    with hot_cursor(connection) as cursor:
        cursor.execute(_COLUMN_UPDATES[key], params)
