from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from batches.forms import MAX_POOL_IDS

from .categorize import recategorize
from .models import Category, DiscoveryRun, SourceDocument, Topic

MAX_FETCH_TOPICS = 50


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "position", "keyword_count", "topic_count")
    list_editable = ("position",)
    search_fields = ("name", "slug", "keywords")
    prepopulated_fields = {"slug": ("name",)}
    fields = ("name", "slug", "position", "description", "keywords")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(topic_count=Count("topics"))

    @admin.display(description="keywords")
    def keyword_count(self, obj: Category) -> int:
        return len(obj.keyword_list)

    @admin.display(description="topics", ordering="topic_count")
    def topic_count(self, obj: Category) -> int:
        return obj.topic_count


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
class TopicAdmin(admin.ModelAdmin):
    list_display = ("title", "category", "category_locked", "status", "score", "source", "published_at")
    list_display_links = ("title",)
    list_editable = ("category",)
    list_filter = ("status", "category", "source", "category_locked")
    list_select_related = ("category",)
    search_fields = ("title", "summary", "url", "external_id")
    list_per_page = 50
    show_full_result_count = False
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

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "category":
            # The editable category column renders one select per row: read the choices once per request,
            # not once per row, so the changelist's query count stays small and fixed.
            if not hasattr(request, "_category_choices"):
                request._category_choices = list(field.choices)
            field.choices = request._category_choices
        return field

    def save_model(self, request, obj: Topic, form, change):
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


@admin.register(DiscoveryRun)
class DiscoveryRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "status", "fetched", "created", "merged", "dropped", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("started_at", "finished_at", "status", "fetched", "created", "merged", "dropped", "sources")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
