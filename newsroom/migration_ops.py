"""Migration operations shared by the apps."""
from __future__ import annotations

from django.db import migrations


def drop_foreign_key_index(app_label: str, model_name: str, field_name: str, field) -> migrations.Operation:
    """Turn off a foreign key's own index (`field` is the key with db_index=False) where other indexes start with
    its column and serve every lookup by it.

    The index is dropped under whatever name it has: Django's AlterField would copy the whole table on SQLite to
    drop one index. Reversed, the index is made again.
    """

    def single_column_indexes(apps, schema_editor) -> tuple[type, list[str]]:
        model = apps.get_model(app_label, model_name)
        column = model._meta.get_field(field_name).column
        with schema_editor.connection.cursor() as cursor:
            constraints = schema_editor.connection.introspection.get_constraints(cursor, model._meta.db_table)
        return model, [name for name, info in constraints.items()
                       if info["index"] and not info["primary_key"] and not info["unique"]
                       and info["columns"] == [column]]

    def drop(apps, schema_editor):
        model, names = single_column_indexes(apps, schema_editor)
        for name in names:
            schema_editor.execute(schema_editor._delete_index_sql(model, name))

    def restore(apps, schema_editor):
        model, names = single_column_indexes(apps, schema_editor)
        if not names:
            schema_editor.execute(schema_editor._create_index_sql(model, fields=[model._meta.get_field(field_name)]))

    return migrations.SeparateDatabaseAndState(
        state_operations=[migrations.AlterField(model_name=model_name, name=field_name, field=field)],
        database_operations=[migrations.RunPython(drop, restore)],
    )
