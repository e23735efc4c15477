"""Appendable tables whose rows read back in their order, on every table storage.

Tiled's SQL table storage orders a table's rows by partition and then, on SQLite and DuckDB,
by ``rowid`` (insertion order); on PostgreSQL (the production storage of ``deploy/``) rows that
tie on the partition come back in the heap's physical order, which is not the order of the
appends once rows have been deleted (``beamwatch delete``, a run's replacement) and the space
is reused, or when appends arrive on several pooled connections. Seen in ``make test``:
``test_concurrent_appends_land_exactly_once[production]`` read seq_nums 2, 3, 9, 10, 14, 11, ...
for 15 appends of 0..14. (All tables of one schema share one SQL table in Tiled, so the
appends of other runs' tables and their deletion shape that heap too.)

Every table beamwatch appends to is therefore created with Tiled's ``order_by_args`` on a
column of its own (:func:`order_by_args`):

- ``row_index`` (:data:`services.core.layout.ROW_INDEX`) when the table has it: the row's
  place in the table, counted from 0 in append order. The analysis result writer
  (:meth:`services.analysis.results.ResultWriter.table_rows`) fills it from the row offset that
  keys its exactly-once appends, so a retried or replayed append carries the same indices.
  Tables with several rows per ``seq_num`` (``frame_stats``: a row per frame of every stream)
  or none (particle, layer, trajectory tables) have it.
- else ``seq_num``, when each row has its own: the raw ``internal`` tables (one row per Event)
  and ``analysis/<uid>/xanes/frames`` (one row per energy), which read back by ``seq_num``
  whatever order the Events were appended in.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from services.core.layout import ROW_INDEX

#: The column that orders a table whose rows each have their own seq_num.
ORDER_COLUMN = "seq_num"


def order_by_args(schema: pa.Schema) -> list[dict[str, str]]:
    """Tiled's ``order_by_args`` for a table of this schema: by ``row_index`` if it has it,
    else by ``seq_num`` if it has it, else empty (the storage's default order)."""
    for column in (ROW_INDEX, ORDER_COLUMN):
        if column in schema.names:
            kind = schema.field(column).type
            if pa.types.is_integer(kind) or pa.types.is_floating(kind):
                return [{"column": column, "direction": "asc"}]
    return []


class _OrderedNew:
    """A container client whose ``new`` adds ``order_by_args`` to the data sources it is given:
    Tiled's own ``create_appendable_table`` runs on it (that method takes no data source
    parameters but ``table_name``)."""

    def __init__(self, node: Any, order: list[dict[str, str]]) -> None:
        self._node = node
        self._order = order

    def new(self, structure_family: Any, data_sources: list[Any], **kwargs: Any) -> Any:
        for source in data_sources:
            source.parameters = {**(source.parameters or {}), "order_by_args": self._order}
        return self._node.new(structure_family, data_sources, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


def create_ordered_table(
    parent: Any,
    schema: pa.Schema,
    *,
    key: str,
    metadata: dict[str, Any] | None = None,
    access_tags: list[str] | None = None,
) -> Any:
    """``parent.create_appendable_table`` (one partition) with the rows ordered as
    :func:`order_by_args` says (see the module docstring)."""
    order = order_by_args(schema)
    target = _OrderedNew(parent, order) if order else parent
    # Tiled's method itself, with the data source parameters added by ``target.new``
    return type(parent).create_appendable_table(
        target, schema, key=key, metadata=metadata, access_tags=access_tags
    )


class OrderedTables:
    """A container client whose ``create_appendable_table`` makes ordered tables (handed to
    bluesky's TiledWriter, which creates the raw ``internal`` tables itself)."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def create_appendable_table(
        self,
        schema: pa.Schema,
        npartitions: int = 1,
        *,
        key: str,
        metadata: dict[str, Any] | None = None,
        access_tags: list[str] | None = None,
        **_: Any,
    ) -> Any:
        if npartitions != 1:
            raise ValueError(f"ordered tables have one partition, got {npartitions}")
        return create_ordered_table(
            self._node, schema, key=key, metadata=metadata, access_tags=access_tags
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)

    def __contains__(self, key: str) -> bool:
        return key in self._node

    def __getitem__(self, key: str) -> Any:
        return self._node[key]
