from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import Count, DecimalField, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponseBadRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from newsroom.admin_lists import DateDrilldownQuerySet, DistinctValuesFilter, LargeListAdmin, counted_exactly

from . import export, views
from .launching import why_not_resumable
from .money import LEDGER_PLACES, format_usd
from .progress import counts_label
from .models import Batch, CostLedgerEntry, DraftVersion, ModelPrice, Newsletter
from .review import REVIEWABLE, ReviewRefused, open_flags, request_regeneration, review_drafts
from .running import BrokerUnavailable
from .versions import TEXT_FIELDS, keep_version

MONEY_FIELD = DecimalField(max_digits=14, decimal_places=6)
DECISION_FIELD = "_decision"  # the draft page's Approve / Reject / new-draft buttons, submitted with the form
DISMISS_FIELD = "_dismiss_flag"  # a flag's Dismiss button, submitted with the form too (issue 9)


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    """Batches are started and resumed from the desk (“New batch”, “Run batch”), never typed in or edited."""

    list_display = ("number", "shown_status", "progress", "model", "budget", "spent", "created_by", "created_at")
    list_filter = ("status", "model")
    list_select_related = ("created_by",)
    readonly_fields = ("status", "status_reason", "size", "include_new", "candidate_ids", "budget_usd",
                       "estimated_cost_usd", "budget_stopped", "model", "created_by", "created_at", "started_at",
                       "finished_at")
    fieldsets = (("Details", {"classes": ("collapse",), "fields": readonly_fields}),)
    actions = ("run_batch",)
    change_form_template = "admin/batches/batch/change_form.html"
    change_list_template = "admin/batches/batch/change_list.html"

    def get_queryset(self, request):
        # The spend is a subquery, not a join: joined with the items as well, it would be counted once per item.
        spent = (CostLedgerEntry.objects.filter(batch=OuterRef("pk")).values("batch")
                 .annotate(total=Sum("amount_usd")).values("total"))
        return super().get_queryset(request).annotate(
            spent_total=Coalesce(Subquery(spent, output_field=MONEY_FIELD),
                                 Value(Decimal("0"), output_field=MONEY_FIELD)),
            item_count=Count("newsletters"),
            drafted_count=Count("newsletters", filter=Q(newsletters__status__in=Newsletter.DRAFTED_STATUSES)),
            failed_count=Count("newsletters", filter=Q(newsletters__status=Newsletter.Status.FAILED)),
            skipped_count=Count("newsletters", filter=Q(newsletters__status=Newsletter.Status.SKIPPED_BUDGET)),
            open_count=Count("newsletters", filter=Q(newsletters__status__in=Newsletter.OPEN_STATUSES)),
        )

    @admin.display(description="batch", ordering="-pk")
    def number(self, obj: Batch) -> str:
        return f"#{obj.pk}"

    @admin.display(description="status", ordering="status")
    def shown_status(self, obj: Batch) -> str:
        # A finished batch with an item being drafted again is running again, whatever its last outcome was.
        if obj.status in Batch.FINAL_STATUSES and obj.open_count:
            return Batch.Status.RUNNING.label
        return obj.get_status_display()

    @admin.display(description="spent", ordering="spent_total")
    def spent(self, obj: Batch) -> str:
        return format_usd(obj.spent_total)

    @admin.display(description="budget", ordering="budget_usd")
    def budget(self, obj: Batch) -> str:
        return format_usd(obj.budget_usd)

    @admin.display(description="items")
    def progress(self, obj: Batch) -> str:
        if not obj.item_count:
            return "—"
        return counts_label(drafted=obj.drafted_count, failed=obj.failed_count, skipped=obj.skipped_count,
                            in_flight=obj.open_count)

    def has_add_permission(self, request):
        return False  # batches are started with "New batch" or "Run batch", never typed in by hand

    def has_change_permission(self, request, obj=None):
        return False  # a batch changes by running; its page is its progress

    def has_delete_permission(self, request, obj=None):
        return False  # the ledger's spend history is append-only, and a batch is the record of what it paid for

    def delete_view(self, request, object_id, extra_context=None):
        # Say why instead of the admin's "your account doesn't have permission", which suggests asking for it.
        self.message_user(request, views.NOT_DELETED, messages.WARNING)
        return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[object_id]))

    def has_run_permission(self, request) -> bool:
        return views.can_run(request)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("run/", wrap(self.run_view), name="batches_batch_run"),
            path("system-status/", wrap(self.system_status_view), name="batches_batch_system_status"),
            path("<int:object_id>/resume/", wrap(self.resume_view), name="batches_batch_resume"),
            path("<int:object_id>/progress/", wrap(self.progress_view), name="batches_batch_progress"),
            path("<int:object_id>/export/", wrap(self.export_view), name="batches_batch_export"),
            path("<int:object_id>/cancel-economy/", wrap(self.cancel_economy_view), name="batches_batch_cancel_economy"),
            *super().get_urls(),
        ]

    def run_view(self, request):
        return views.new_batch(request, self)

    def resume_view(self, request, object_id):
        return views.resume_batch_view(request, self, object_id)

    def progress_view(self, request, object_id):
        return views.batch_progress_json(request, self, object_id)

    def export_view(self, request, object_id):
        return views.batch_export(request, self, object_id)

    def system_status_view(self, request):
        return views.system_status_view(request, self)

    def cancel_economy_view(self, request, object_id):
        return views.cancel_economy_view(request, self, object_id)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_run": views.can_run(request),
                         "can_view_ledger": request.user.has_perm("batches.view_costledgerentry")}
        return super().changelist_view(request, extra_context=extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        batch = self.get_object(request, object_id)
        if batch is not None and self.has_view_permission(request, batch):
            extra_context = {**(extra_context or {}), **views.batch_page_context(request, batch)}
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    @admin.action(description="Run batch (resume a failed or stopped one)…", permissions=["run"])
    def run_batch(self, request, queryset):
        chosen = list(queryset.order_by("-pk")[:2])
        if len(chosen) != 1:
            self.message_user(request, "Choose one batch at a time to resume; to start a new batch use “New batch”.",
                              messages.WARNING)
            return None
        batch = chosen[0]
        refusal = why_not_resumable(batch)
        if refusal:
            self.message_user(request, f"{refusal} To draft more, start a new batch.", messages.WARNING)
            return None
        return HttpResponseRedirect(reverse("admin:batches_batch_resume", args=[batch.pk]))


class MarkdownField(forms.CharField):
    """Browsers send a textarea with CRLF line ends; keep the LF the model wrote, so an untouched body is not
    counted as an edit in the review trail."""

    def to_python(self, value):
        return super().to_python(value).replace("\r\n", "\n")


class NewsletterForm(forms.ModelForm):
    body_markdown = MarkdownField(label="Body (Markdown)", required=False, widget=forms.Textarea(
        attrs={"rows": 24, "style": "width: 100%; max-width: 48em; font-family: monospace;"}))

    class Meta:
        model = Newsletter
        fields = ("subject", "preview_text", "body_markdown")
        widgets = {
            "subject": forms.TextInput(attrs={"class": "vLargeTextField", "style": "width: 100%; max-width: 48em;"}),
            "preview_text": forms.TextInput(attrs={"style": "width: 100%; max-width: 48em;"}),
        }


class RecentBatchFilter(admin.SimpleListFilter):
    """The newest batches (and the one chosen, however old): Django's own filter would list every batch ever run."""

    title = "batch"
    parameter_name = "batch__id__exact"
    shown = 20

    def lookups(self, request, model_admin):
        batches = list(Batch.objects.order_by("-pk")[: self.shown])  # newest first, through the primary key
        chosen = self.value()
        if chosen and chosen.isdigit() and all(str(b.pk) != chosen for b in batches):
            batches += list(Batch.objects.filter(pk=int(chosen)))
        return [(str(batch.pk), str(batch)) for batch in batches]

    def queryset(self, request, queryset):
        return queryset.filter(batch_id=self.value()) if self.value() else queryset


@admin.register(Newsletter)
class NewsletterAdmin(LargeListAdmin):
    form = NewsletterForm
    list_display = ("__str__", "batch_link", "topic_link", "status", "cost", "generated_at", "reviewed_by")
    list_filter = ("status", RecentBatchFilter)  # read no whole table (LargeListAdmin)
    list_select_related = ("batch", "topic", "reviewed_by")
    search_fields = ("subject", "preview_text", "body_markdown", "topic__title")
    readonly_fields = ("batch", "topic", "position", "status", "error", "model", "attempts", "cost_usd",
                       "created_at", "generated_at", "reviewed_by", "reviewed_at")
    fieldsets = (
        ("Draft", {"fields": ("subject", "preview_text", "body_markdown"),
                   "description": "Markdown: **bold**, *italic*, [link](https://…), lists with “- ”, "
                                  "headings with “## ”. The preview above shows it as readers will see it."}),
        ("Details", {"classes": ("collapse",), "fields": readonly_fields}),
    )
    actions = ("approve", "reject", "regenerate", "export_zip")
    change_form_template = "admin/batches/newsletter/change_form.html"

    def has_add_permission(self, request):
        return False

    @admin.display(description="batch", ordering="batch")
    def batch_link(self, obj: Newsletter) -> str:
        return format_html('<a href="{}">#{}</a>', reverse("admin:batches_batch_change", args=[obj.batch_id]),
                           obj.batch_id)

    @admin.display(description="topic", ordering="topic__title")
    def topic_link(self, obj: Newsletter) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:topics_topic_change", args=[obj.topic_id]),
                           obj.topic.title)

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, obj: Newsletter) -> str:
        return format_usd(obj.cost_usd)

    def save_model(self, request, obj: Newsletter, form, change):
        # Approval is a permission of its own: an approved draft whose text is changed by someone who may not
        # approve goes back to "draft ready", so what gets exported is always what an approver read.
        edited = set(TEXT_FIELDS) & set(form.changed_data)
        if change and edited and obj.status == Newsletter.Status.APPROVED and not self.has_approve_permission(request):
            obj.status, obj.reviewed_by, obj.reviewed_at = Newsletter.Status.GENERATED, None, None
            self.message_user(request, "The draft changed after it was approved, so it needs approving again.",
                              messages.WARNING)
        if change and edited:
            # The text as stored (perhaps a new draft that arrived while the editor typed) stays restorable; the
            # admin's change view runs this in the same transaction as the save.
            keep_version(newsletter=obj, reason=DraftVersion.Reason.EDITED, user=request.user)
        super().save_model(request, obj, form, change)

    def log_change(self, request, obj, message):
        # Pressing Approve on an unchanged draft saves the form first; "No fields changed." would only be noise.
        if not message and (request.POST.get(DECISION_FIELD) or request.POST.get(DISMISS_FIELD)):
            return None
        return super().log_change(request, obj, message)

    def response_change(self, request, obj):
        decision = request.POST.get(DECISION_FIELD)
        if decision:
            return views.apply_decision(request, self, obj, decision)  # the form is saved: now decide
        if request.POST.get(DISMISS_FIELD):  # the form is saved: now dismiss the flag
            return views.dismiss_flag_response(request, self, obj.pk, request.POST[DISMISS_FIELD])
        return super().response_change(request, obj)

    def has_approve_permission(self, request) -> bool:
        return views.can_approve(request)

    def has_run_permission(self, request) -> bool:
        return views.can_run(request)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:object_id>/review/", wrap(self.review_view), name="batches_newsletter_review"),
            path("<int:object_id>/versions/<int:version_id>/", wrap(self.version_view),
                 name="batches_newsletter_version"),
            path("<int:object_id>/versions/<int:version_id>/restore/", wrap(self.restore_view),
                 name="batches_newsletter_restore"),
            path("<int:object_id>/export/<str:fmt>/", wrap(self.export_view), name="batches_newsletter_export"),
            path("<int:object_id>/flags/<int:flag_id>/dismiss/", wrap(self.dismiss_flag_view),
                 name="batches_newsletter_dismiss_flag"),
            *super().get_urls(),
        ]

    def review_view(self, request, object_id):
        return views.review_newsletter(request, self, object_id)

    def version_view(self, request, object_id, version_id):
        return views.draft_version_view(request, self, object_id, version_id)

    def restore_view(self, request, object_id, version_id):
        return views.restore_draft_version(request, self, object_id, version_id)

    def export_view(self, request, object_id, fmt):
        return views.export_newsletter(request, self, object_id, fmt)

    def dismiss_flag_view(self, request, object_id, flag_id):
        return views.dismiss_flag_view(request, self, object_id, flag_id)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        decision = request.POST.get(DECISION_FIELD) if request.method == "POST" else None
        if decision:
            try:
                views.check_decision(request, decision)  # before anything is saved
            except views.UnknownDecision:
                return HttpResponseBadRequest("Unknown decision.")
        newsletter = self.get_object(request, object_id)
        if newsletter is not None and self.has_view_permission(request, newsletter):
            extra_context = {**(extra_context or {}), **views.draft_page_context(
                request, newsletter, can_edit=self.has_change_permission(request, newsletter))}
        response = super().change_view(request, object_id, form_url, extra_context=extra_context)
        if decision and response.status_code == 200 and not getattr(response, "asks_confirmation", False):
            # The form came back with errors: nothing was saved and nothing decided.
            self.message_user(request, "Nothing was decided: the draft has errors (below). Correct them, then "
                              "press the button again; your text is still in the form.", messages.ERROR)
        return response

    def _review(self, request, queryset, status: str) -> None:
        ids = review_drafts(queryset=queryset, status=status, user=request.user)
        if ids:
            LogEntry.objects.log_actions(
                user_id=request.user.pk, queryset=Newsletter.objects.filter(pk__in=ids), action_flag=CHANGE,
                change_message=f"{Newsletter.Status(status).label}.",
            )
        self.message_user(request, f"{len(ids)} draft(s) marked {Newsletter.Status(status).label.lower()}.",
                          messages.SUCCESS)

    @admin.action(description="Approve selected drafts", permissions=["approve"])
    def approve(self, request, queryset):
        if not request.POST.get("confirm_flags"):
            flags = list(open_flags(queryset=queryset.filter(status__in=REVIEWABLE)).select_related("newsletter"))
            if flags:  # as on the draft page: approving past open flags is confirmed first
                return views.confirm_flagged_approval(
                    request, self, newsletters=list({f.newsletter_id: f.newsletter for f in flags}.values()),
                    flags=flags, action_ids=[str(pk) for pk in queryset.values_list("pk", flat=True)],
                )
        self._review(request, queryset, Newsletter.Status.APPROVED)
        return None

    @admin.action(description="Reject selected drafts", permissions=["approve"])
    def reject(self, request, queryset):
        self._review(request, queryset, Newsletter.Status.REJECTED)

    @admin.action(description="Ask Claude for a new draft of the selected items (charged to their batch)",
                  permissions=["run"])
    def regenerate(self, request, queryset):
        queued, refused = 0, []
        for newsletter in queryset.select_related("batch"):
            try:
                request_regeneration(newsletter=newsletter)
            except ReviewRefused as exc:
                refused.append(f"#{newsletter.pk}: {exc}")
                continue
            except BrokerUnavailable as exc:
                self.message_user(request, f"{exc} Nothing more was queued; the drafts are unchanged.",
                                  messages.ERROR)
                break
            queued += 1
            self.log_change(request, newsletter, "Asked Claude for a new draft.")
        if queued:
            self.message_user(request, f"{queued} new draft(s) on their way.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    @admin.action(description="Export selected approved drafts (zip of Markdown and HTML)", permissions=["view"])
    def export_zip(self, request, queryset):
        drafts = list(export.approved_drafts(ids=queryset.values_list("pk", flat=True)))
        if not drafts:
            self.message_user(request, "None of the selected drafts is approved: only approved drafts are exported.",
                              messages.WARNING)
            return None
        return views.zip_response(export.drafts_zip(drafts), "approved-drafts.zip")


class ProviderFilter(DistinctValuesFilter):
    title = "provider"
    parameter_name = "provider"


class ModelFilter(DistinctValuesFilter):
    title = "model"
    parameter_name = "model"


@admin.register(CostLedgerEntry)
class CostLedgerEntryAdmin(LargeListAdmin):
    """Spend history is append-only here: nobody adds, edits or deletes it from the admin."""

    list_display = ("created_at", "provider", "model", "batch", "status", "amount", "reserved",
                    "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
    list_filter = ("status", ProviderFilter, ModelFilter, RecentBatchFilter)  # read no whole table (LargeListAdmin)
    list_select_related = ("batch",)
    date_hierarchy = "created_at"
    search_fields = ("description", "idempotency_key", "request_id")

    def get_queryset(self, request):
        # The date drill-down (date_hierarchy) reads the created_at index instead of every entry.
        return DateDrilldownQuerySet.adopt(super().get_queryset(request))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="amount", ordering="amount_usd")
    def amount(self, obj: CostLedgerEntry) -> str:
        return format_usd(obj.amount_usd, places=LEDGER_PLACES)

    @admin.display(description="reserved", ordering="reserved_usd")
    def reserved(self, obj: CostLedgerEntry) -> str:
        return format_usd(obj.reserved_usd, places=LEDGER_PLACES)

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view),
                 name="batches_costledgerentry_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request):
        return views.spend_dashboard_view(request, self)

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context=extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        # The total of the entries listed, when they were counted (at most the paginator's bound): summing a
        # larger selection would read every entry in it. Past the bound the page points to the dashboard, whose
        # figures come from running totals.
        if changelist is not None and counted_exactly(changelist.result_count):
            total = changelist.queryset.aggregate(total=Sum("amount_usd"))["total"] or Decimal("0")
            response.context_data["ledger_total"] = total
        return response


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "effective_date", "input_per_mtok", "output_per_mtok", "cache_write_per_mtok",
                    "cache_read_per_mtok", "batch_discount", "source")
    list_filter = ("provider", "effective_date")
    search_fields = ("model", "source")
