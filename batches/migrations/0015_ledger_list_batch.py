# The ledger list filtered by batch reads an index in the list's order (newest first) instead of every entry of
# the ledger in date order looking for the batch's (issue 12 item 3). The batch key's own index goes, on the
# ledger (this index and ledger_batch_status start with the batch) and on drafts (newsletter_list_order and the
# unique (batch, topic) constraint do): each served no lookup the others do not.

import django.db.models.deletion
from django.db import migrations, models

from newsroom.migration_ops import drop_foreign_key_index


class Migration(migrations.Migration):

    dependencies = [
        ('batches', '0014_economy_gone'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='costledgerentry',
            index=models.Index(fields=['batch', '-created_at', '-id'], name='ledger_list_batch'),
        ),
        drop_foreign_key_index(
            'batches', 'costledgerentry', 'batch',
            models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT,
                              related_name='ledger_entries', to='batches.batch'),
        ),
        drop_foreign_key_index(
            'batches', 'newsletter', 'batch',
            models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                              related_name='newsletters', to='batches.batch'),
        ),
    ]
