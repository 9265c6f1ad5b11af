"""Seed the price table from Anthropic's published prices (USD per million tokens; editable in the admin)."""
import datetime
from decimal import Decimal

from django.db import migrations

SOURCE = "https://platform.claude.com/docs/en/about-claude/pricing (as listed by LiteLLM 1.109.1)"
EFFECTIVE = datetime.date(2026, 11, 1)
# model: (input, output, cache write 5 min, cache write 1 h, cache read)
PRICES = {
    "claude-sonnet-4-6": ("3", "15", "3.75", "6", "0.30"),
    "claude-sonnet-4-5": ("3", "15", "3.75", "6", "0.30"),
    "claude-sonnet-4-5-20250929": ("3", "15", "3.75", "6", "0.30"),
    "claude-sonnet-5": ("2", "10", "2.50", "4", "0.20"),
    "claude-sonnet-5-5": ("2", "10", "2.50", "4", "0.10"),
    "claude-haiku-4-5": ("1", "5", "1.25", "2", "0.10"),
    "claude-haiku-4-5-20251001": ("1", "5", "1.25", "2", "0.10"),
    "claude-haiku-5-5": ("0.10", "0.50", "0.125", "0.20", "0.01"),
    "claude-opus-4-5": ("5", "25", "6.25", "10", "0.50"),
    "claude-opus-4-6": ("5", "25", "6.25", "10", "0.50"),
    "claude-opus-4-7": ("5", "25", "6.25", "10", "0.50"),
    "claude-opus-4-8": ("5", "25", "6.25", "10", "0.50"),
    "claude-opus-5": ("5", "25", "6.25", "10", "0.50"),
    "claude-opus-5-5": ("4", "20", "5", "8", "0.20"),
}


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("batches", "ModelPrice")
    for model, (inp, out, write, write_1h, read) in PRICES.items():
        ModelPrice.objects.update_or_create(
            model=model,
            effective_date=EFFECTIVE,
            defaults={
                "provider": "anthropic",
                "input_per_mtok": Decimal(inp),
                "output_per_mtok": Decimal(out),
                "cache_write_per_mtok": Decimal(write),
                "cache_write_1h_per_mtok": Decimal(write_1h),
                "cache_read_per_mtok": Decimal(read),
                "batch_discount": Decimal("0.5"),
                "source": SOURCE,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("batches", "ModelPrice").objects.filter(model__in=PRICES, effective_date=EFFECTIVE).delete()


class Migration(migrations.Migration):
    dependencies = [("batches", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
