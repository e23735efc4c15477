"""Appendable tables whose rows read back in their order, on every table storage.

Tiled's SQL table storage orders a table's rows by partition and then, on SQLite and DuckDB,
by ``rowid`` (insertion order); on PostgreSQL (the production storage of ``deploy/``) rows that
tie on the partition come back in the heap's physical order, which is not the order of the
appends once rows have been deleted (``beamwatch delete``, a run's replacement) and the space
is reused, or when appends arrive on several pooled connections. Seen in ``make test``:
``test_concurrent_appends_land_exactly_once[production]`` read seq_nums 2, 3, 9, 10, 14, 11, ...
for 15 appends of 0..14.

The raw ``internal`` tables (one row per Event, ``seq_num`` unique in a stream) are created
with Tiled's ``order_by_args`` on ``seq_num``, so every storage returns their rows by
``seq_num``. The analysis tables keep Tiled's default order for now: some hold several rows per
``seq_num`` (``frame_stats`` has a row per frame of every stream), so their order needs a
column of its own (not done; on PostgreSQL they can read out of append order).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

#: The column that orders a table's rows when it has one.
ORDER_COLUMN = "seq_num"


def order_by_args(schema: pa.Schema) -> list[dict[str, str]]:
    """Tiled's ``order_by_args`` for a table of this schema (empty: the default order)."""
    if ORDER_COLUMN in schema.names:
        kind = schema.field(ORDER_COLUMN).type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return [{"column": ORDER_COLUMN, "direction": "asc"}]
    return []


def create_ordered_table(
    parent: Any,
    schema: pa.Schema,
    *,
    key: str,
    metadata: dict[str, Any] | None = None,
    access_tags: list[str] | None = None,
) -> Any:
    """``parent.create_appendable_table`` with the rows ordered by ``seq_num`` when the table
    has it (see the module docstring); one partition."""
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import DataSource
    from tiled.structures.table import TableStructure

    order = order_by_args(schema)
    if not order:
        return parent.create_appendable_table(
            schema=schema, key=key, metadata=metadata, access_tags=access_tags
        )
    structure = TableStructure.from_schema(schema, 1)
    return parent.new(
        StructureFamily.table,
        [
            DataSource(
                structure=structure,
                structure_family=StructureFamily.table,
                mimetype="application/x-tiled-sql-table",
                parameters={"order_by_args": order},
            )
        ],
        key=key,
        metadata=metadata or {},
        specs=[],
        access_tags=access_tags,
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
