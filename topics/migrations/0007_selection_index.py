# A topic records what drafting did with it (issue 10 item 11), and selection reads each category's head
# through an index in exactly its order (issue 12 item 4).

import topics.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('topics', '0005_topic_list_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='topic',
            name='drafted_at',
            field=models.DateTimeField(blank=True, editable=False, help_text='When its last draft was saved.', null=True),
        ),
        migrations.AddField(
            model_name='topic',
            name='usage',
            field=models.CharField(choices=[('unused', 'Not used'), ('taken', 'Being drafted'), ('drafted', 'Drafted')], default='unused', editable=False, max_length=10),
        ),
        migrations.AddField(
            model_name='topic',
            name='used_at',
            field=models.DateTimeField(blank=True, editable=False, help_text='When a batch took it for drafting (empty while unused).', null=True),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=topics.models.PortableIndex(models.F('category'), models.F('status'), models.OrderBy(models.F('score'), descending=True), models.OrderBy(models.F('published_at'), descending=True, nulls_last=True), models.OrderBy(models.F('id'), descending=True), condition=models.Q(('usage', 'unused')), name='topic_selection_head'),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(condition=models.Q(('usage', 'taken')), fields=['-used_at'], name='topic_taken_at'),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(condition=models.Q(('usage', 'drafted')), fields=['-used_at'], name='topic_drafted_at'),
        ),
        migrations.AddConstraint(
            model_name='topic',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('usage', 'unused'), ('used_at__isnull', True)), models.Q(('usage__in', ['taken', 'drafted']), ('used_at__isnull', False)), _connector='OR'), name='topic_usage_valid'),
        ),
    ]
