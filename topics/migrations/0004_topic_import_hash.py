from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("topics", "0003_discovery_run"),
    ]

    operations = [
        migrations.AddField(
            model_name="topic",
            name="import_hash",
            field=models.CharField(
                blank=True, default="", editable=False, max_length=32,
                help_text="Hash of the fields last imported from a file; an unchanged row is skipped on re-import.",
            ),
        ),
    ]
