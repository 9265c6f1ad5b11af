from __future__ import annotations

from decimal import Decimal

from django.contrib import admin, messages
from django.db.models import Sum
from django.utils import timezone

from .models import Batch, CostLedgerEntry, ModelPrice, Newsletter


class NewsletterInline(admin.TabularInline):
    model = Newsletter
    fields = ("position", "topic", "status", "subject", "cost_usd", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("topic")


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("__str__", "status", "size", "model", "budget_usd", "spent", "created_by", "created_at")
    list_filter = ("status", "model")
    list_select_related = ("created_by",)
    readonly_fields = ("status", "status_reason", "size", "include_new", "candidate_ids", "budget_usd",
                       "estimated_cost_usd", "budget_stopped", "model", "created_by", "created_at", "started_at",
                       "finished_at")
    inlines = (NewsletterInline,)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(spent_total=Sum("ledger_entries__amount_usd"))

    @admin.display(description="spent (USD)", ordering="spent_total")
    def spent(self, obj: Batch) -> Decimal:
        return obj.spent_total or Decimal("0")

    def has_add_permission(self, request):
        return False  # batches are started with "Run batch", never typed in by hand


@admin.register(Newsletter)
class NewsletterAdmin(admin.ModelAdmin):
    list_display = ("__str__", "batch", "topic", "status", "cost_usd", "generated_at", "reviewed_by")
    list_filter = ("status", "batch")
    list_select_related = ("batch", "topic", "reviewed_by")
    search_fields = ("subject", "preview_text", "body_markdown", "topic__title")
    readonly_fields = ("batch", "topic", "position", "status", "error", "model", "attempts", "cost_usd",
                       "created_at", "generated_at", "reviewed_by", "reviewed_at")
    fields = ("subject", "preview_text", "body_markdown", *readonly_fields)
    actions = ("approve", "reject")

    def has_add_permission(self, request):
        return False

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm("batches.approve_newsletter")

    def _review(self, request, queryset, status: str) -> None:
        count = queryset.filter(status__in=Newsletter.DRAFTED_STATUSES).update(
            status=status, reviewed_by=request.user, reviewed_at=timezone.now()
        )
        self.message_user(request, f"{count} draft(s) marked {Newsletter.Status(status).label.lower()}.",
                          messages.SUCCESS)

    @admin.action(description="Approve selected drafts", permissions=["approve"])
    def approve(self, request, queryset):
        self._review(request, queryset, Newsletter.Status.APPROVED)

    @admin.action(description="Reject selected drafts", permissions=["approve"])
    def reject(self, request, queryset):
        self._review(request, queryset, Newsletter.Status.REJECTED)


@admin.register(CostLedgerEntry)
class CostLedgerEntryAdmin(admin.ModelAdmin):
    """Spend history is append-only here: nobody adds, edits or deletes it from the admin."""

    list_display = ("created_at", "provider", "model", "batch", "status", "amount_usd", "reserved_usd",
                    "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
    list_filter = ("status", "provider", "model", "batch")
    list_select_related = ("batch",)
    date_hierarchy = "created_at"
    search_fields = ("description", "idempotency_key", "request_id")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context=extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            total = changelist.queryset.aggregate(total=Sum("amount_usd"))["total"] or Decimal("0")
            response.context_data["ledger_total"] = total
        return response


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "effective_date", "input_per_mtok", "output_per_mtok", "cache_write_per_mtok",
                    "cache_read_per_mtok", "batch_discount", "source")
    list_filter = ("provider", "effective_date")
    search_fields = ("model", "source")
