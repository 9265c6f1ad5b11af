from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.db import models
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from batches.forms import MAX_POOL_IDS
from newsroom.admin_lists import DistinctValuesFilter, EstimatedCountPaginator, RenderedOncePerValue

from .categorize import recategorize
from .models import Category, DiscoveryRun, Topic


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


class SourceFilter(DistinctValuesFilter):
    title = "source"
    parameter_name = "source"
    casefold = True  # through the lower(source) index the list is ordered by (topics.models)


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ("title", "category", "category_locked", "status", "score", "source", "published_at")
    list_display_links = ("title",)
    list_editable = ("category",)
    # At a million topics the list reads one page through an index matching its order (and each filter's), counts
    # no further than EstimatedCountPaginator's bound, and finds the sources through the (source, ...) index.
    list_filter = ("status", "category", SourceFilter, "category_locked")
    list_select_related = ("category",)
    search_fields = ("title", "summary", "url", "external_id")
    list_per_page = 50
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice is a scan of the whole table
    ordering = ("-score", "-id")
    # A URL typed without a scheme is taken as https (Django 6's default; saying so silences the 5.x warning).
    formfield_overrides = {models.URLField: {"form_class": forms.URLField, "assume_scheme": "https"}}
    actions = ("approve", "reject", "recategorize_selected", "run_batch")
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

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "category" and isinstance(getattr(field, "widget", None), RelatedFieldWidgetWrapper):
            # The editable category column: one rendering per category for the whole page, not one per row.
            field.widget = RenderedOncePerValue.wrapping(
                field.widget, rendered=request.__dict__.setdefault("_category_widget_html", {})
            )
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


@admin.register(DiscoveryRun)
class DiscoveryRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "status", "fetched", "created", "merged", "dropped", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("started_at", "finished_at", "status", "fetched", "created", "merged", "dropped", "sources")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
