# The text a draft had before it was replaced (issue 10: edits are never lost).

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('batches', '0006_ledger_running_totals'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='DraftVersion',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('subject', models.CharField(blank=True, max_length=300)),
                ('preview_text', models.CharField(blank=True, max_length=300)),
                ('body_markdown', models.TextField(blank=True)),
                ('model', models.CharField(blank=True, help_text='The model that drafted this text.', max_length=100)),
                ('drafted_at', models.DateTimeField(blank=True, help_text='When the model drafted it.', null=True)),
                ('reason', models.CharField(choices=[('new_draft', 'Replaced by a new draft'), ('edited', 'Replaced by an edit'), ('restored', 'Replaced by a restored version')], max_length=20)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False, help_text='When it was replaced.')),
                ('newsletter', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='batches.newsletter')),
                ('replaced_by', models.ForeignKey(blank=True, help_text='Who replaced this text; empty when a new draft from the model did.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['-created_at', '-id'],
                'indexes': [models.Index(fields=['newsletter', '-created_at'], name='draftversion_newsletter_time')],
            },
        ),
    ]
