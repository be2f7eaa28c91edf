"""The dataset's row schema: one definition from which the ``datasets.Features``, the Arrow
schema of the shards and the card's field table are all derived."""

from fvds.schemas.rows import COLUMNS, Column, arrow_schema, features, schema_table

__all__ = ["COLUMNS", "Column", "arrow_schema", "features", "schema_table"]
