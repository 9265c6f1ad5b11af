from __future__ import annotations

from dataclasses import dataclass

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.db import models
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from newsroom.admin_lists import DistinctValuesFilter, LargeListAdmin, RenderedOncePerValue

from .categorize import recategorize
from .manual import known_topic, prepare_manual_topic
from .models import FALLBACK_CATEGORY_SLUG, Category, DiscoveryRun, SourceDocument, Topic
from .selection import MAX_POOL_IDS, RecentStories, recently_used

MAX_FETCH_TOPICS = 50


def _newsletter_model():
    # Reached through the reverse relation rather than imported: topics/ imports nothing from batches/.
    return Topic._meta.get_field("newsletters").related_model


@dataclass(frozen=True)
class TopicUse:
    """How a topic has been used, for the topic list: drafted (with its draft), in a batch now, or a repeat."""

    label: str
    url: str = ""
    note: str = ""


@dataclass(frozen=True)
class UsingDraft:
    pk: int
    batch_id: int
    status: str


class ManualTopicForm(forms.ModelForm):
    """Add a topic by hand: a URL and a title (a summary and a category if the editor wants)."""

    url = forms.URLField(label="URL", assume_scheme="https", max_length=1000,
                         help_text="The article, post or video the newsletter should be about.")
    category = forms.ModelChoiceField(queryset=Category.objects.all(), required=False,
                                      help_text="Leave empty to categorise by keywords, as for discovered topics.")
    status = forms.ChoiceField(choices=[(Topic.Status.APPROVED, "Approved (ready to draft)"),
                                        (Topic.Status.NEW, "New (review later)")], initial=Topic.Status.APPROVED)

    class Meta:
        model = Topic
        fields = ("url", "title", "summary", "category", "status")

    def clean(self):
        data = super().clean()
        if data.get("url") and data.get("title"):
            existing = known_topic(url=data["url"], title=data["title"])
            if existing is not None:
                link = reverse("admin:topics_topic_change", args=[existing.pk])
                raise forms.ValidationError(format_html(
                    'This story is already a topic: <a href="{}">{}</a>.', link, existing.title))
        return data


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "position", "keyword_count", "topic_count")
    list_editable = ("position",)
    search_fields = ("name", "slug", "keywords")
    prepopulated_fields = {"slug": ("name",)}
    fields = ("name", "slug", "position", "description", "keywords")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(topic_count=Count("topics"))

    # The fallback category is where a topic matching no keyword goes: it can be renamed and given keywords, but
    # not deleted or re-slugged, or every such topic would have nowhere to go.
    @staticmethod
    def _is_fallback(obj: Category | None) -> bool:
        return obj is not None and obj.slug == FALLBACK_CATEGORY_SLUG

    def has_delete_permission(self, request, obj=None):
        return not self._is_fallback(obj) and super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return ("slug",) if self._is_fallback(obj) else ()

    def get_prepopulated_fields(self, request, obj=None):
        return {} if self._is_fallback(obj) else super().get_prepopulated_fields(request, obj)

    @admin.display(description="keywords")
    def keyword_count(self, obj: Category) -> int:
        return len(obj.keyword_list)

    @admin.display(description="topics", ordering="topic_count")
    def topic_count(self, obj: Category) -> int:
        return obj.topic_count


class SourceFilter(DistinctValuesFilter):
    title = "source"
    parameter_name = "source"
    casefold = True  # through the lower(source) index the list is ordered by (topics.models)


class SourceDocumentInline(admin.TabularInline):
    """The topic's source material as drafts use it: read, or not read and why (filled by gathering only)."""

    model = SourceDocument
    extra = 0
    can_delete = False
    fields = ("kind", "source_link", "status", "reason", "excerpt", "fetched_at")
    readonly_fields = fields
    verbose_name = "source document"
    verbose_name_plural = "source material"

    def has_view_permission(self, request, obj=None):
        # The material is part of the topic: whoever may see the topic sees what it was drafted from.
        return request.user.has_perm("topics.view_topic") or request.user.has_perm("topics.change_topic")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="source")
    def source_link(self, obj: SourceDocument) -> str:
        label = obj.title or obj.url or obj.get_kind_display()
        if not obj.url.lower().startswith(("http://", "https://")):
            return label  # an address from the web that is not http(s) is shown, never made a link
        return format_html('<a href="{}" rel="noopener noreferrer" target="_blank">{}</a>', obj.url, label)

    @admin.display(description="text")
    def excerpt(self, obj: SourceDocument) -> str:
        return f"{len(obj.text):,} characters: {Truncator(obj.text).chars(240)}" if obj.text else "—"


@admin.register(Topic)
class TopicAdmin(LargeListAdmin):
    list_display = ("title", "category", "status", "score", "use", "source", "published")
    list_display_links = ("title",)
    list_editable = ("category",)
    # At a million topics the list reads one page through an index matching its order (and each filter's: see
    # Topic.Meta.indexes), counts no further than LargeListAdmin's bound, and finds the sources through the
    # (lower(source), ...) index.
    list_filter = ("status", "category", SourceFilter, "category_locked")
    list_select_related = ("category",)
    search_fields = ("title", "summary", "url", "external_id")
    list_per_page = 50
    ordering = ("-score", "-id")
    # A URL typed without a scheme is taken as https (Django 6's default; saying so silences the 5.x warning).
    formfield_overrides = {models.URLField: {"form_class": forms.URLField, "assume_scheme": "https"}}
    actions = ("approve", "reject", "recategorize_selected", "run_batch", "fetch_material")
    inlines = (SourceDocumentInline,)
    change_list_template = "admin/topics/topic/change_list.html"
    readonly_fields = ("source", "external_id", "canonical_url", "sources", "engagement", "raw",
                       "category_locked", "created_at", "updated_at", "reviewed_by", "reviewed_at")
    fieldsets = (
        (None, {"fields": ("title", "summary", "url", "status", "score", "category", "category_locked",
                           "published_at")}),
        ("Provenance", {"classes": ("collapse",), "fields": ("source", "external_id", "canonical_url", "sources",
                                                              "engagement", "raw")}),
        ("Review", {"fields": ("reviewed_by", "reviewed_at", "created_at", "updated_at")}),
    )

    add_fieldsets = ((None, {"fields": ("url", "title", "summary", "category", "status")}),)

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ManualTopicForm  # a topic by hand: a URL and a title, the rest is filled in
        return super().get_form(request, obj, **kwargs)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        drafts = None  # a draft's subject is the draft's: shown only to who may read drafts
        if request.user.has_perm("batches.view_newsletter"):
            drafts = (_newsletter_model().objects.filter(topic_id=object_id).select_related("batch")
                      .only("pk", "subject", "status", "batch__id", "batch__created_at").order_by("-pk")[:20])
        extra_context = {**(extra_context or {}), "topic_drafts": drafts}
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    def get_changelist_form(self, request, **kwargs):
        form = super().get_changelist_form(request, **kwargs)

        class CategoryOnlyForm(form):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                # Just the select in the list: the edit/view icons of each row's category cost a line a row.
                widget = self.fields["category"].widget
                widget.can_add_related = widget.can_change_related = widget.can_view_related = False

        return CategoryOnlyForm

    def annotate_page(self, request, objects: list[Topic]) -> None:
        annotate_use(objects, user=request.user)

    @admin.display(description="used")
    def use(self, obj: Topic):
        use = getattr(obj, "desk_use", None)
        if use is None:
            return "—"
        if use.url:
            return format_html('<a href="{}" title="{}">{}</a>', use.url, use.note, use.label)
        return format_html('<span title="{}">{}</span>', use.note, use.label)

    @admin.display(description="published", ordering="published_at")
    def published(self, obj: Topic) -> str:
        return timezone.localtime(obj.published_at).strftime("%Y-%m-%d") if obj.published_at else "—"

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "category":
            # The editable category column renders one select per row: read the choices once per request,
            # not once per row, so the changelist's query count stays small and fixed.
            if not hasattr(request, "_category_choices"):
                # One query (list(field.choices) would count the categories, then read them through a cursor).
                empty = [("", field.empty_label)] if field.empty_label is not None else []
                request._category_choices = empty + [field.choices.choice(c) for c in field.queryset]
            field.choices = request._category_choices
        return field

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "category" and isinstance(getattr(field, "widget", None), RelatedFieldWidgetWrapper):
            # The editable category column: one rendering per category for the whole page, not one per row.
            field.widget = RenderedOncePerValue.wrapping(
                field.widget, rendered=request.__dict__.setdefault("_category_widget_html", {})
            )
        return field

    def save_model(self, request, obj: Topic, form, change):
        if not change:
            prepare_manual_topic(topic=obj, user=request.user, category_chosen=obj.category_id is not None)
            super().save_model(request, obj, form, change)
            return
        # A category chosen by an editor (form or list column) is an override: lock it against re-categorisation.
        if "category" in form.changed_data:
            obj.category_locked = True
        if "status" in form.changed_data:
            obj.reviewed_by, obj.reviewed_at = request.user, timezone.now()
        super().save_model(request, obj, form, change)

    def _review(self, request, queryset, status: str) -> None:
        count = queryset.update(status=status, reviewed_by=request.user, reviewed_at=timezone.now())
        self.message_user(request, f"{count} topic(s) marked {Topic.Status(status).label.lower()}.", messages.SUCCESS)

    @admin.action(description="Approve selected topics", permissions=["change"])
    def approve(self, request, queryset):
        self._review(request, queryset, Topic.Status.APPROVED)

    @admin.action(description="Reject selected topics", permissions=["change"])
    def reject(self, request, queryset):
        self._review(request, queryset, Topic.Status.REJECTED)

    @admin.action(description="Re-categorise selected topics by keywords (editor choices kept)", permissions=["change"])
    def recategorize_selected(self, request, queryset):
        changed = recategorize(topics=queryset.select_related("category"))
        self.message_user(request, f"{changed} topic(s) moved to another category.", messages.SUCCESS)

    def has_run_batch_permission(self, request) -> bool:
        return request.user.has_perm("batches.run_batch")

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_run": self.has_run_batch_permission(request)}
        return super().changelist_view(request, extra_context=extra_context)

    @admin.action(description="Run batch with the selected topics as candidates…", permissions=["run_batch"])
    def run_batch(self, request, queryset):
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: MAX_POOL_IDS + 1])
        if len(ids) > MAX_POOL_IDS:
            self.message_user(request, f"Choose at most {MAX_POOL_IDS} topics, or use “New batch” to draw from every "
                              "approved topic.", messages.WARNING)
            return None
        # The confirmation page shows what diversity selection picks from these topics before anything is spent.
        return HttpResponseRedirect(reverse("admin:batches_batch_run") + "?topics=" + ",".join(map(str, ids)))


    def get_inline_instances(self, request, obj=None):
        # A topic has material only once it exists: the page that adds one by hand shows none.
        return super().get_inline_instances(request, obj) if obj is not None else []

    @admin.action(description="Fetch source material for the selected topics", permissions=["change"])
    def fetch_material(self, request, queryset):
        from .tasks import gather_material_task

        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: MAX_FETCH_TOPICS + 1])
        if len(ids) > MAX_FETCH_TOPICS:
            self.message_user(request, f"Choose at most {MAX_FETCH_TOPICS} topics at a time.", messages.WARNING)
            return
        queued = 0
        for pk in ids:
            try:
                gather_material_task.apply_async(args=[pk], retry=True)
            except Exception as exc:  # kombu/redis raise several transport errors; all mean "not queued"
                self.message_user(request, f"Could not queue the fetch: the task broker is unreachable "
                                  f"({exc.__class__.__name__}). {queued} topic(s) were queued before it failed.",
                                  messages.ERROR)
                return
            queued += 1
        self.message_user(request, f"Fetching source material for {queued} topic(s) on the workers; each topic's "
                          "page lists what was read, and what could not be and why.", messages.SUCCESS)


def annotate_use(topics, *, user) -> None:
    """Set `desk_use` on each topic of a list page: three indexed queries for the page, whatever its length and
    whatever the size of the tables. A draft or a batch is linked only for a user who may view it."""
    topics = list(topics)
    draft_links, batch_links = user.has_perm("batches.view_newsletter"), user.has_perm("batches.view_batch")
    if not topics:
        return
    Newsletter = _newsletter_model()
    # Through the topic key's index, in its order (in the list's index_order_reads, a planner without statistics,
    # which takes "topic_id IN (50 ids)" to match a quarter of the drafts, cannot read them all instead). The
    # status is checked here: a status condition could send the planner to the status index, to read every draft
    # of that status.
    rows = list(Newsletter.objects.filter(topic__in=topics).order_by("topic_id")
                .values_list("created_at", "pk", "topic_id", "batch_id", "status"))
    latest = {topic_id: UsingDraft(pk, batch_id, status)  # oldest first: the newest use of a topic wins
              for _, pk, topic_id, batch_id, status in sorted(rows) if status in Newsletter.USED_STATUSES}
    # The stories drafted recently (90 days), which selection steers clear of: read from the topics' own record of
    # their use (two partial indexes holding only used topics), not by joining every recent draft.
    drafted = recently_used()
    recent = RecentStories([title for _, title in drafted])
    positions: dict[int, list[int]] = {}  # a drafted topic's places among the recent stories: not its own repeat
    for index, (pk, _) in enumerate(drafted):
        positions.setdefault(pk, []).append(index)
    for topic in topics:
        item = latest.get(topic.pk)
        if item is not None and item.status in Newsletter.DRAFTED_STATUSES:
            label = Newsletter.Status(item.status).label
            topic.desk_use = (
                TopicUse("drafted", reverse("admin:batches_newsletter_change", args=[item.pk]),
                         f"{label}: open the draft (batch #{item.batch_id})") if draft_links
                else TopicUse("drafted", note=f"{label} (batch #{item.batch_id})"))
        elif item is not None:
            topic.desk_use = TopicUse(
                f"in batch #{item.batch_id}",
                reverse("admin:batches_batch_change", args=[item.batch_id]) if batch_links else "", "Being drafted now")
        else:
            index = recent.repeated(topic.title, skip=positions.get(topic.pk, ()))
            topic.desk_use = (TopicUse("repeat", note=f"Repeats a story drafted recently: {drafted[index][1]}")
                              if index is not None else None)


@admin.register(DiscoveryRun)
class DiscoveryRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "status", "fetched", "created", "merged", "dropped", "finished_at", "error")
    list_filter = ("status",)
    readonly_fields = ("started_at", "finished_at", "status", "error", "fetched", "created", "merged", "dropped",
                       "sources")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
