"""Create the 'Editor' group: everything an editor does at the desk, and nothing an operator does."""
from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Editor"
# (app_label, codename): review topics and categories, read batches and the money, edit and approve drafts,
# and run batches (which spends money, hence a permission of its own).
PERMISSIONS = [
    ("topics", "view_topic"),
    ("topics", "change_topic"),
    ("topics", "view_category"),
    ("topics", "change_category"),
    ("batches", "view_batch"),
    ("batches", "run_batch"),
    ("batches", "view_newsletter"),
    ("batches", "change_newsletter"),
    ("batches", "approve_newsletter"),
    ("batches", "view_costledgerentry"),
    ("batches", "view_modelprice"),
]


def create_editor_group(apps, schema_editor):
    # Permissions are normally created by post_migrate, after every migration has run; on a fresh database
    # they do not exist yet at this point, so create them now (the call is idempotent).
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
        app_config.models_module = None
    add_editor_group(apps)


def add_editor_group(apps):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    wanted = {(app, codename) for app, codename in PERMISSIONS}
    found = [
        p for p in Permission.objects.filter(codename__in=[c for _, c in PERMISSIONS]).select_related("content_type")
        if (p.content_type.app_label, p.codename) in wanted
    ]
    missing = wanted - {(p.content_type.app_label, p.codename) for p in found}
    if missing:
        raise RuntimeError(f"permissions missing for the Editor group: {sorted(missing)}")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(*found)


def remove_editor_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0002_seed_prices"),
        ("topics", "0002_seed_categories"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_editor_group, remove_editor_group)]
