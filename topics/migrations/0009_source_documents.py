import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("topics", "0008_backfill_usage"),
    ]

    operations = [
        migrations.CreateModel(
            name="SourceDocument",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(choices=[("article", "Article"), ("reddit", "Reddit thread"), ("video", "Video"), ("social", "Social post"), ("research", "Research answer"), ("search_result", "Search result")], max_length=20)),
                ("url", models.CharField(blank=True, help_text="Where the material came from (blank for research).", max_length=1000)),
                ("title", models.CharField(blank=True, max_length=500)),
                ("text", models.TextField(blank=True, help_text="The plain text a draft may use.")),
                ("status", models.CharField(choices=[("ok", "Read"), ("failed", "Could not be read")], max_length=10)),
                ("reason", models.TextField(blank=True, help_text="Why it could not be read, in plain words.")),
                ("transient", models.BooleanField(default=False, help_text="The failure may pass (a timeout, a server error): the next gathering tries again.")),
                ("rank", models.PositiveSmallIntegerField(default=0, help_text="Best sources first: lower is better.")),
                ("content_hash", models.CharField(blank=True, help_text="SHA-256 of the text.", max_length=64)),
                ("fetched_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("topic", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="documents", to="topics.topic")),
            ],
            options={
                "ordering": ["topic_id", "rank", "id"],
                "constraints": [
                    models.UniqueConstraint(fields=("topic", "kind", "url"), name="document_unique_topic_kind_url"),
                    models.CheckConstraint(condition=models.Q(("status__in", ["ok", "failed"])), name="document_status_valid"),
                    models.CheckConstraint(condition=models.Q(("status", "failed"), ("reason", ""), _connector="OR"), name="document_reason_only_on_failure"),
                ],
            },
        ),
    ]
