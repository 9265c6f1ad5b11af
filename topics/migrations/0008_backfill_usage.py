# Topics used before 0007 get the state their newsletters gave them, so selection (which now reads only topics)
# keeps leaving them out. The one place topics reads batches: history, through the migration state.
from __future__ import annotations

from django.db import migrations
from django.db.models import Exists, Max, OuterRef, Subquery
from django.db.models.functions import Coalesce

# Newsletter statuses as they were when this migration was written.
USED = ["pending", "generating", "generated", "approved", "rejected"]
DRAFTED = ["generated", "approved", "rejected"]


def backfill(apps, schema_editor):
    Topic = apps.get_model("topics", "Topic")
    Newsletter = apps.get_model("batches", "Newsletter")

    def latest(statuses, field):
        return Subquery(
            Newsletter.objects.filter(topic=OuterRef("pk"), status__in=statuses)
            .values("topic").annotate(latest=Max(field)).values("latest")[:1]
        )

    drafted = Newsletter.objects.filter(topic=OuterRef("pk"), status__in=DRAFTED)
    used = Newsletter.objects.filter(topic=OuterRef("pk"), status__in=USED)
    Topic.objects.filter(Exists(drafted)).update(
        usage="drafted", used_at=latest(USED, "created_at"),
        drafted_at=Coalesce(latest(DRAFTED, "generated_at"), latest(DRAFTED, "created_at")),
    )
    Topic.objects.filter(Exists(used), usage="unused").update(usage="taken", used_at=latest(USED, "created_at"))


def forget(apps, schema_editor):
    apps.get_model("topics", "Topic").objects.exclude(usage="unused").update(
        usage="unused", used_at=None, drafted_at=None
    )


class Migration(migrations.Migration):
    dependencies = [
        ("topics", "0007_selection_index"),
        ("batches", "0001_initial"),
    ]

    operations = [migrations.RunPython(backfill, forget)]
