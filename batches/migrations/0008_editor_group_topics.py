"""Editors may also add a topic by hand (a URL and a title) and look at the discovery runs."""
from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Editor"
PERMISSIONS = [("topics", "add_topic"), ("topics", "view_discoveryrun")]


def _permissions(apps):
    Permission = apps.get_model("auth", "Permission")
    return [Permission.objects.get(content_type__app_label=app, codename=codename) for app, codename in PERMISSIONS]


def add_topic_permissions(apps):
    """Give the Editor group these permissions (the group and the permissions must exist)."""
    group = apps.get_model("auth", "Group").objects.filter(name=GROUP).first()
    if group is not None:
        group.permissions.add(*_permissions(apps))


def forwards(apps, schema_editor):
    # As in 0003: on a fresh database post_migrate has not created the permissions yet; the call is idempotent.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
        app_config.models_module = None
    add_topic_permissions(apps)


def backwards(apps, schema_editor):
    group = apps.get_model("auth", "Group").objects.filter(name=GROUP).first()
    if group is not None:
        group.permissions.remove(*_permissions(apps))


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0003_editor_group"),
        ("batches", "0007_draft_versions"),
        ("topics", "0003_discovery_run"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
