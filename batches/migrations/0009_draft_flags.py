import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0008_editor_group_topics"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="newsletter",
            name="sources",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.CreateModel(
            name="DraftFlag",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(choices=[("link", "Link not in the sources"), ("figure", "Figure not in the sources"), ("citation", "Citation of no source"), ("thin", "Thin material")], max_length=10)),
                ("text", models.CharField(help_text="The link, figure or citation as the draft writes it.", max_length=500)),
                ("sentence", models.TextField(blank=True, help_text="The sentence of the draft it stands in.")),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("dismissed_at", models.DateTimeField(blank=True, null=True)),
                ("dismissed_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                ("newsletter", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="flags", to="batches.newsletter")),
            ],
            options={
                "ordering": ["newsletter_id", "id"],
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("kind__in", ["link", "figure", "citation", "thin"])), name="draftflag_kind_valid"),
                    models.CheckConstraint(condition=models.Q(("dismissed_by__isnull", True), ("dismissed_at__isnull", False), _connector="OR"), name="draftflag_dismissal_has_time"),
                ],
            },
        ),
    ]
