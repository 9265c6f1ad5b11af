# The admin ledger and draft lists read through indexes matching their order and filters (issue 12).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('batches', '0009_draft_flags'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='costledgerentry',
            index=models.Index(fields=['provider', 'created_at'], name='ledger_list_provider'),
        ),
        migrations.AddIndex(
            model_name='costledgerentry',
            index=models.Index(fields=['model', 'created_at'], name='ledger_list_model'),
        ),
        migrations.AddIndex(
            model_name='costledgerentry',
            index=models.Index(fields=['status', 'created_at'], name='ledger_list_status'),
        ),
        migrations.AddIndex(
            model_name='newsletter',
            index=models.Index(fields=['batch', 'position', 'id'], name='newsletter_list_order'),
        ),
        migrations.AddIndex(
            model_name='newsletter',
            index=models.Index(fields=['status', 'batch', 'position', 'id'], name='newsletter_list_status'),
        ),
    ]
