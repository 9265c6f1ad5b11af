# The topic list's order and filters, and discovery's recent window, read through indexes (issue 12).
# Depends on 0003 on this branch: 0004_topic_import_hash is another branch's; chain them when merging.

import django.db.models.functions.text
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('topics', '0004_topic_import_hash'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(fields=['-score', '-id'], name='topic_list_order'),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(fields=['category', '-score', '-id'], name='topic_list_category'),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(django.db.models.functions.text.Lower('source'), models.F('score').desc(), models.F('id').desc(), name='topic_list_source'),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(condition=models.Q(('category_locked', True)), fields=['-score', '-id'], name='topic_list_locked'),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(fields=['created_at', 'id'], name='topic_created_id'),
        ),
    ]
