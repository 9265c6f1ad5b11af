# The topic list's status filter reads an index in exactly the list's order (status, -score, -id), so no plan
# sorts or scans a whole status however many topics have it (issue 12 item 3). Dropped: the category key's own
# index (topic_list_category and topic_selection_head start with the category and serve every lookup by it) and
# two (category, status, score) / (status, score) indexes that no query reads any more.

import django.db.models.deletion
from django.db import migrations, models

from newsroom.migration_ops import drop_foreign_key_index


class Migration(migrations.Migration):

    dependencies = [
        ('topics', '0009_source_documents'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(fields=['status', '-score', '-id'], name='topic_list_status'),
        ),
        migrations.RemoveIndex(
            model_name='topic',
            name='topic_cat_status_score',
        ),
        migrations.RemoveIndex(
            model_name='topic',
            name='topic_status_score',
        ),
        drop_foreign_key_index(
            'topics', 'topic', 'category',
            models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='topics',
                              to='topics.category'),
        ),
    ]
