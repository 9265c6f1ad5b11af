# "Which topic has this URL?" reads a partial index of the topics that have a URL (issue 12): with statistics
# saying nearly every topic's URL is blank, PostgreSQL priced a probe of the full index as a read of the whole
# index and read the table instead, once per URL.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('topics', '0010_list_indexes_exact'),
    ]

    operations = [
        migrations.AlterField(
            model_name='topic',
            name='canonical_url',
            field=models.CharField(blank=True, max_length=1000),
        ),
        migrations.AddIndex(
            model_name='topic',
            index=models.Index(condition=models.Q(('canonical_url__gt', '')), fields=['canonical_url'], name='topic_canonical_url'),
        ),
    ]
