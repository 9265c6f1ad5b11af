"""Seed the periodic tasks as django-celery-beat schedules (editable under Periodic tasks in the admin):
the sweeper every minute, discovery on Mondays and Thursdays at 06:00 in the project's time zone."""
import json

from django.conf import settings
from django.db import migrations

SWEEP = "Sweeper: recover stuck and lost work"
DISCOVER = "Discovery: fetch new topics"


def seed(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    PeriodicTask.objects.get_or_create(
        name=SWEEP,
        defaults={"task": "batches.sweep", "interval": every_minute, "expire_seconds": 55,
                  "description": "Takes back items whose lease expired, publishes lost work again, closes batches "
                                 "whose items are all final, replays answers spooled during a database outage."},
    )
    mon_thu, _ = CrontabSchedule.objects.get_or_create(
        minute="0", hour="6", day_of_week="mon,thu", day_of_month="*", month_of_year="*", timezone=settings.TIME_ZONE,
    )
    PeriodicTask.objects.get_or_create(
        name=DISCOVER,
        defaults={"task": "topics.discover", "crontab": mon_thu, "kwargs": json.dumps({"limit": 50}),
                  "description": "Discovery from every configured source."},
    )


def unseed(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=[SWEEP, DISCOVER]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0004_recovery_leases"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(seed, unseed)]
