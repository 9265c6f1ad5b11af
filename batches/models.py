from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

MONEY = {"max_digits": 14, "decimal_places": 6}
PER_MTOK = {"max_digits": 12, "decimal_places": 6}


class ModelPrice(models.Model):
    """One model's list price in USD per million tokens, valid from `effective_date`."""

    model = models.CharField(max_length=100, help_text="The model id exactly as sent to the API.")
    provider = models.CharField(max_length=40, default="anthropic")
    input_per_mtok = models.DecimalField("input $/MTok", **PER_MTOK)
    output_per_mtok = models.DecimalField("output $/MTok", **PER_MTOK)
    cache_write_per_mtok = models.DecimalField("cache write (5 min) $/MTok", **PER_MTOK)
    cache_write_1h_per_mtok = models.DecimalField("cache write (1 h) $/MTok", **PER_MTOK)
    cache_read_per_mtok = models.DecimalField("cache read $/MTok", **PER_MTOK)
    batch_discount = models.DecimalField(
        max_digits=4, decimal_places=3, default=Decimal("0.5"),
        help_text="Fraction taken off every bucket for Message Batches API calls (0.5 = half price).",
    )
    source = models.CharField(max_length=300, help_text="Where this price was published.")
    effective_date = models.DateField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "-effective_date"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_date"], name="price_unique_model_date"),
            models.CheckConstraint(
                condition=Q(input_per_mtok__gte=0) & Q(output_per_mtok__gte=0) & Q(cache_write_per_mtok__gte=0)
                & Q(cache_write_1h_per_mtok__gte=0) & Q(cache_read_per_mtok__gte=0),
                name="price_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(batch_discount__gte=0) & Q(batch_discount__lte=1), name="price_discount_fraction"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} (from {self.effective_date})"


class Batch(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUBMITTED = "submitted", "With Anthropic (economy)"
        DONE = "done", "Done"
        PARTIAL = "partial", "Partly failed"
        BUDGET_EXHAUSTED = "budget_exhausted", "Stopped by the budget"
        FAILED = "failed", "Failed"

    FINAL_STATUSES = (Status.DONE, Status.PARTIAL, Status.BUDGET_EXHAUSTED, Status.FAILED)

    class Delivery(models.TextChoices):
        NOW = "now", "Now (Messages API)"
        ECONOMY = "economy", "Economy (Message Batches API, half price, within 24 h)"

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    status_reason = models.TextField(blank=True)
    delivery = models.CharField(max_length=10, choices=Delivery.choices, default=Delivery.NOW)
    size = models.PositiveSmallIntegerField(default=8)
    include_new = models.BooleanField(default=False)
    candidate_ids = models.JSONField(
        default=list, blank=True, help_text="When set, selection draws only from these topics."
    )
    budget_usd = models.DecimalField(**MONEY)
    estimated_cost_usd = models.DecimalField(default=Decimal("0"), **MONEY)
    budget_stopped = models.BooleanField(
        default=False, help_text="Set when the budget refused a call: items not yet started are skipped."
    )
    # Running totals of this batch's ledger entries, kept in the same transaction as each entry so a reservation
    # reads this one (locked) row instead of summing the ledger; what settlements gave back is in LedgerTally
    # (the totals are these plus the batch's tallies: batches.ledger.batch_totals). `manage.py reconcile_ledger`
    # checks them.
    ledger_total_usd = models.DecimalField(
        default=Decimal("0"), **MONEY, help_text="Sum of the batch's ledger entries: settled spend plus open reservations."
    )
    reserved_open_usd = models.DecimalField(
        default=Decimal("0"), **MONEY, help_text="The part of the total held by reservations not settled yet."
    )
    overrun_usd = models.DecimalField(
        default=Decimal("0"), **MONEY,
        help_text="How much answered calls cost beyond their reservations (usage above what was counted).",
    )
    queued_at = models.DateTimeField(
        null=True, blank=True, help_text="When the batch was last handed to the workers (the sweeper republishes it "
        "if nothing picks it up)."
    )
    model = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"
        permissions = [("run_batch", "Can run a batch (spends money)")]
        constraints = [
            models.CheckConstraint(condition=Q(budget_usd__gt=0), name="batch_budget_positive"),
            models.CheckConstraint(condition=Q(size__gte=1) & Q(size__lte=100), name="batch_size_range"),
        ]

    def __str__(self) -> str:
        return f"Batch #{self.pk} ({self.get_status_display()})"

    ACTIVE_STATUSES = (Status.PENDING, Status.QUEUED, Status.RUNNING, Status.SUBMITTED)

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINAL_STATUSES

    def spent_usd(self) -> Decimal:
        """Ledger total of this batch, open reservations included (the one sum lives in batches.ledger)."""
        from .ledger import batch_spent

        return batch_spent(self.pk)

    def mark_failed(self, reason: str) -> None:
        self.status = self.Status.FAILED
        self.status_reason = reason
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "status_reason", "finished_at"])


class Newsletter(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        GENERATING = "generating", "Generating"
        GENERATED = "generated", "Draft ready"
        FAILED = "failed", "Failed"
        SKIPPED_BUDGET = "skipped_budget", "Skipped: budget reached"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    # A topic is taken while an item for it is queued or drafting, and used once a draft exists;
    # failed and skipped items free it again.
    USED_STATUSES = (Status.PENDING, Status.GENERATING, Status.GENERATED, Status.APPROVED, Status.REJECTED)
    OPEN_STATUSES = (Status.PENDING, Status.GENERATING)
    DRAFTED_STATUSES = (Status.GENERATED, Status.APPROVED, Status.REJECTED)
    FINAL_STATUSES = (Status.GENERATED, Status.FAILED, Status.SKIPPED_BUDGET, Status.APPROVED, Status.REJECTED)

    # No index of its own: newsletter_list_order and the (batch, topic) constraint start with it.
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="newsletters", db_index=False)
    topic = models.ForeignKey("topics.Topic", on_delete=models.PROTECT, related_name="newsletters")
    position = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    subject = models.CharField(max_length=300, blank=True)
    preview_text = models.CharField(max_length=300, blank=True)
    body_markdown = models.TextField(blank=True)
    model = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    claim_token = models.CharField(max_length=64, blank=True, help_text="Which task run owns the item now.")
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="While generating: when the sweeper may take the item back."
    )
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When a task for this item was last queued.")
    interruptions = models.PositiveSmallIntegerField(
        default=0, help_text="Times the sweeper took the item back after its lease ran out (a worker died mid-draft)."
    )
    cost_usd = models.DecimalField(default=Decimal("0"), **MONEY)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    generated_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    # The numbered sources the draft's prompt carried, as [{"n", "title", "url", "kind", "cited"}]: a snapshot,
    # so the [n] markers keep pointing at the same sources whatever happens to the topic's material later.
    sources = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["batch_id", "position", "id"]
        permissions = [("approve_newsletter", "Can approve newsletter drafts")]
        constraints = [
            models.UniqueConstraint(fields=["batch", "topic"], name="newsletter_unique_batch_topic"),
        ]
        indexes = [
            models.Index(fields=["status", "lease_expires_at"], name="newsletter_status_lease"),
            # The admin's draft list: its order, alone and within a status ("Drafts to review").
            models.Index(fields=["batch", "position", "id"], name="newsletter_list_order"),
            models.Index(fields=["status", "batch", "position", "id"], name="newsletter_list_status"),
        ]

    def __str__(self) -> str:
        return self.subject or f"Newsletter on “{self.topic}”"


class MonthlySpend(models.Model):
    """Running totals of one calendar month's ledger entries (all batches and discovery), kept in the same
    transaction as each entry; the monthly cap locks and reads this row instead of summing the month."""

    month = models.CharField(max_length=7, unique=True, help_text="YYYY-MM in the project's time zone.")
    total_usd = models.DecimalField(default=Decimal("0"), **MONEY)
    reserved_usd = models.DecimalField(default=Decimal("0"), **MONEY)

    class Meta:
        verbose_name = "monthly spend"
        verbose_name_plural = "monthly spend"

    def __str__(self) -> str:
        return f"{self.month}: {self.total_usd} USD"


class LedgerTally(models.Model):
    """What settlements and releases took off a budget's running totals, spread over a few rows per budget.

    A reservation must lock its budget's row (the batch's, the month's) to check and take from it; a settlement
    or a release only ever gives back (what a call cost beyond its reservation is added to the locked row
    instead), so it writes here, on the slot of its worker process, and never waits on the rows reservations
    queue on. A budget's totals are its row plus its tallies: a few rows whatever the size of the ledger. A
    reservation that reads a tally a moment old sees a total higher than the true one, never lower, so the
    budget can refuse a call a moment early, never let one through that crosses it.
    """

    scope = models.CharField(max_length=24, help_text="batch:<id> or month:<YYYY-MM>.")
    slot = models.PositiveSmallIntegerField()
    total_usd = models.DecimalField(default=Decimal("0"), **MONEY)
    reserved_usd = models.DecimalField(default=Decimal("0"), **MONEY)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "slot"], name="ledger_tally_slot"),
            # The budgets' safety rests on this: a tally read a moment late can only overstate what was spent.
            models.CheckConstraint(condition=Q(total_usd__lte=0) & Q(reserved_usd__lte=0),
                                   name="ledger_tally_only_gives_back"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} #{self.slot}: {self.total_usd} USD"


class BudgetLock(models.Model):
    """A row that exists only to be locked: it serialises reservations against a shared cap (a month)."""

    key = models.CharField(max_length=40, unique=True)


class CostLedgerEntry(models.Model):
    """One paid call. Reserved at its worst case before the call, settled to its actual cost after."""

    class Status(models.TextChoices):
        RESERVED = "reserved", "Reserved (outcome pending or unknown)"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released (cost nothing)"

    class Note(models.TextChoices):
        USAGE_MISSING = "usage_missing", "No usage in the answer: settled at its reservation"
        OVERRUN = "overrun", "Usage above the reservation"

    idempotency_key = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    provider = models.CharField(max_length=40, default="anthropic")
    model = models.CharField(max_length=100, blank=True)
    description = models.CharField(max_length=300, blank=True)
    # No index of its own: ledger_batch_status and ledger_list_batch start with it.
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries",
                              db_index=False)
    newsletter = models.ForeignKey(
        Newsletter, null=True, blank=True, on_delete=models.SET_NULL, related_name="ledger_entries"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RESERVED)
    reserved_usd = models.DecimalField(**MONEY)
    amount_usd = models.DecimalField(**MONEY, help_text="What counts against budgets now.")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    cache_read_tokens = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=120, blank=True)
    note = models.CharField(
        max_length=20, choices=Note.choices, blank=True,
        help_text="Set when the settlement is not a plain usage x price: no usage reported, or above the reservation.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "cost ledger entry"
        verbose_name_plural = "cost ledger"
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_usd__gte=0) & Q(reserved_usd__gte=0), name="ledger_amounts_not_negative"
            ),
        ]
        indexes = [
            models.Index(fields=["batch", "status"], name="ledger_batch_status"),
            # The admin's ledger list: newest first within a provider, model, status or batch filter; the first two
            # also give the filters their values by skipping through the index (newsroom.admin_lists).
            models.Index(fields=["provider", "created_at"], name="ledger_list_provider"),
            models.Index(fields=["model", "created_at"], name="ledger_list_model"),
            models.Index(fields=["status", "created_at"], name="ledger_list_status"),
            models.Index(fields=["batch", "-created_at", "-id"], name="ledger_list_batch"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.amount_usd} USD ({self.get_status_display()})"


class DraftVersion(models.Model):
    """A draft's text as it stood before something replaced it: a new draft, an editor's edit or a restore.

    Appended, never changed: with every replaced text kept, no draft and no edit is ever lost, and any of them
    can be put back from the draft page.
    """

    class Reason(models.TextChoices):
        NEW_DRAFT = "new_draft", "Replaced by a new draft"
        EDITED = "edited", "Replaced by an edit"
        RESTORED = "restored", "Replaced by a restored version"

    newsletter = models.ForeignKey(Newsletter, on_delete=models.CASCADE, related_name="versions")
    subject = models.CharField(max_length=300, blank=True)
    preview_text = models.CharField(max_length=300, blank=True)
    body_markdown = models.TextField(blank=True)
    model = models.CharField(max_length=100, blank=True, help_text="The model that drafted this text.")
    drafted_at = models.DateTimeField(null=True, blank=True, help_text="When the model drafted it.")
    reason = models.CharField(max_length=20, choices=Reason.choices)
    replaced_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Who replaced this text; empty when a new draft from the model did.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False, help_text="When it was replaced.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["newsletter", "-created_at"], name="draftversion_newsletter_time")]

    def __str__(self) -> str:
        return f"{self.subject or 'Untitled draft'} ({self.get_reason_display().lower()}, {self.created_at:%Y-%m-%d %H:%M})"


class DraftFlag(models.Model):
    """Something in a draft its sources do not back: a link, a figure or a citation to check, or thin material.

    Written with the draft by batches.grounding; an editor dismisses one once checked (who and when are kept).
    """

    class Kind(models.TextChoices):
        LINK = "link", "Link not in the sources"
        FIGURE = "figure", "Figure not in the sources"
        CITATION = "citation", "Citation of no source"
        THIN = "thin", "Thin material"

    newsletter = models.ForeignKey(Newsletter, on_delete=models.CASCADE, related_name="flags")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    text = models.CharField(max_length=500, help_text="The link, figure or citation as the draft writes it.")
    sentence = models.TextField(blank=True, help_text="The sentence of the draft it stands in.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    dismissed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    dismissed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["newsletter_id", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=["link", "figure", "citation", "thin"]),
                                   name="draftflag_kind_valid"),
            # Who dismissed it may later be deleted (SET_NULL), but a flag dismissed by someone always says when.
            models.CheckConstraint(condition=Q(dismissed_by__isnull=True) | Q(dismissed_at__isnull=False),
                                   name="draftflag_dismissal_has_time"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.text}"

    @property
    def is_open(self) -> bool:
        return self.dismissed_at is None


class EconomySubmission(models.Model):
    """An economy batch's one Message Batch at Anthropic: its id and where its life stands.

    `creating` is written (and committed) before the create call goes out, so a create whose outcome is unknown
    (a timeout, a dropped connection) is found again by listing recent batches instead of being sent twice.
    """

    class State(models.TextChoices):
        PREPARING = "preparing", "Reserving the budget"
        CREATING = "creating", "Create sent, outcome not known yet"
        SUBMITTED = "submitted", "With Anthropic"
        ENDED = "ended", "Results collected"
        NOT_CREATED = "not_created", "Never created"
        GONE = "gone", "Unknown to Anthropic (404) for too long: given up, reservations kept"

    batch = models.OneToOneField(Batch, on_delete=models.CASCADE, related_name="economy")
    state = models.CharField(max_length=12, choices=State.choices, default=State.PREPARING)
    anthropic_batch_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    request_count = models.PositiveSmallIntegerField(default=0)
    create_attempts = models.PositiveSmallIntegerField(default=0)
    create_attempted_at = models.DateTimeField(null=True, blank=True)
    create_finished_at = models.DateTimeField(
        null=True, blank=True, help_text="When the create call whose outcome is unknown gave up (the search window ends here)."
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    poll_interval_seconds = models.PositiveIntegerField(default=0)
    polls = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    not_found_since = models.DateTimeField(
        null=True, blank=True, help_text="Since when every poll has met a 404 (cleared by any answer that moves on)."
    )

    class Meta:
        indexes = [models.Index(fields=["state", "next_poll_at"], name="economy_state_next_poll")]

    def __str__(self) -> str:
        return f"{self.anthropic_batch_id or 'economy'} for batch #{self.batch_id} ({self.state})"


class EconomyRequest(models.Model):
    """One item's request inside a Message Batch, with its ledger reservation and what became of it."""

    class State(models.TextChoices):
        RESERVED = "reserved", "Reserved, waiting to be sent"
        SUBMITTED = "submitted", "With Anthropic"
        SUCCEEDED = "succeeded", "Answered (settled)"
        ERRORED = "errored", "Errored (released)"
        CANCELED = "canceled", "Canceled (released)"
        EXPIRED = "expired", "Expired (released)"
        MISSING = "missing", "Missing from the results (released)"
        NOT_SENT = "not_sent", "Never sent (released)"
        UNKNOWN = "unknown", "Outcome unknown (reservation kept)"

    OPEN_STATES = (State.RESERVED, State.SUBMITTED)

    submission = models.ForeignKey(EconomySubmission, on_delete=models.CASCADE, related_name="requests")
    newsletter = models.OneToOneField(Newsletter, on_delete=models.CASCADE, related_name="economy_request")
    custom_id = models.CharField(max_length=64)
    entry = models.ForeignKey(CostLedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=10, choices=State.choices, default=State.RESERVED)
    detail = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["submission", "custom_id"], name="economy_request_unique_custom_id"),
            models.CheckConstraint(condition=Q(custom_id__regex=r"^[a-zA-Z0-9_-]{1,64}$"),
                                   name="economy_request_custom_id_format"),
        ]

    def __str__(self) -> str:
        return f"{self.custom_id} ({self.state})"
