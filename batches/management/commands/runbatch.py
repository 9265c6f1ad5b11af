from __future__ import annotations

import json
import math
import sys
import time
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.management.base import CommandError
from django.db import InterfaceError, OperationalError, connection

from newsroom.commands import ContractCommand

from batches import launching, running
from batches.ledger import monthly_remaining
from batches.models import Batch, Newsletter
from batches.planning import plan_batch
from batches.preflight import ERROR, run_checks
from batches.pricing import PriceMissing, to_money

EXIT_ERROR, EXIT_BUDGET, EXIT_FAILED_ITEMS = 1, 3, 4
# What the batch's budget column holds: six decimal places, fourteen digits.
MIN_BUDGET, MAX_BUDGET = Decimal("0.000001"), Decimal("99999999")
POLL_SECONDS = 0.5
DEFAULT_TIMEOUT = 1800.0


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{error.__class__.__name__}: {text.splitlines()[0][:160]}" if text else error.__class__.__name__


def money(value: Decimal) -> str:
    return str(to_money(Decimal(value)))


def parse_budget(value: str) -> Decimal:
    try:
        budget = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"--budget must be a number of dollars, got {value!r}", returncode=EXIT_ERROR) from None
    if not budget.is_finite() or budget <= 0:
        raise CommandError(f"--budget must be above 0, got {value}", returncode=EXIT_ERROR)
    budget = to_money(budget)
    if not MIN_BUDGET <= budget <= MAX_BUDGET:
        raise CommandError(
            f"--budget must be between ${MIN_BUDGET} and ${MAX_BUDGET:,}, got {value}", returncode=EXIT_ERROR
        )
    return budget


class Command(ContractCommand):
    help = "Run a batch: diversity selection, then one newsletter draft per topic (in-process or on the workers)."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Show the selection and the estimated cost only.")
        parser.add_argument("--size", type=int, default=None, help="Newsletters in the batch (1-100).")
        parser.add_argument("--budget", default=None, help="Budget in USD for this batch (default BATCH_BUDGET_USD).")
        parser.add_argument("--include-new", action="store_true", help="Also select topics not yet reviewed.")
        parser.add_argument("--discover-only", action="store_true", help="Run discovery and stop.")
        parser.add_argument("--queue", action="store_true", help="Hand the batch to the Celery workers.")
        parser.add_argument("--wait", action="store_true", help="With --queue: follow the batch to its end.")
        parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                            help=f"With --wait: give up following after this long (default {DEFAULT_TIMEOUT:g}); "
                                 "the batch goes on.")
        parser.add_argument("--resume", type=int, default=None, metavar="BATCH",
                            help="Continue a stopped, failed or stranded batch without drafting an item twice.")
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print one JSON object.")
        # --- economy batches (Message Batches API) ---
        delivery = parser.add_mutually_exclusive_group()
        delivery.add_argument("--economy", action="store_const", const="economy", dest="delivery",
                              help="Draft through the Message Batches API at half price (results within 24 h); "
                                   "returns once submitted, or follows it to the end with --wait.")
        delivery.add_argument("--now", action="store_const", const="now", dest="delivery",
                              help="Draft through the Messages API right away (the default unless BATCH_DELIVERY=economy).")
        parser.add_argument("--cancel", type=int, default=None, metavar="BATCH",
                            help="Cancel an economy batch: finished requests are still settled, the rest released.")

    def handle(self, *args, **opts):
        self.as_json = opts["as_json"]
        size = opts["size"] if opts["size"] is not None else settings.BATCH_SIZE
        if not 1 <= size <= 100:
            raise CommandError(f"--size must be between 1 and 100, got {size}", returncode=EXIT_ERROR)
        budget = parse_budget(opts["budget"] if opts["budget"] is not None else str(settings.BATCH_BUDGET_USD))
        economy = self.delivery(opts) == "economy" and not (opts["dry_run"] or opts["discover_only"] or opts["resume"])
        if opts["wait"] and not (opts["queue"] or economy):
            raise CommandError("--wait only goes with --queue", returncode=EXIT_ERROR)
        if opts["timeout"] is not None and not opts["wait"]:
            raise CommandError("--timeout only goes with --wait", returncode=EXIT_ERROR)
        timeout = DEFAULT_TIMEOUT if opts["timeout"] is None else opts["timeout"]
        if not math.isfinite(timeout) or not 0 < timeout <= 7 * 86400:
            raise CommandError(f"--timeout must be between 0 and 604800 seconds, got {opts['timeout']}",
                               returncode=EXIT_ERROR)
        try:
            return self.run(opts, size=size, budget=budget, timeout=timeout)
        except (OperationalError, InterfaceError) as exc:
            raise CommandError(
                f"The database became unavailable ({first_line(exc)}). "
                "Work already paid for is kept; the sweeper (or `runbatch --resume BATCH`) carries on once it is back.",
                returncode=EXIT_ERROR,
            ) from None

    def run(self, opts, *, size: int, budget: Decimal, timeout: float):
        if opts["cancel"] is not None:
            return self.cancel_economy(opts["cancel"])
        if self.delivery(opts) == "economy" and not (opts["dry_run"] or opts["discover_only"] or opts["resume"]):
            return self.economy(opts, size=size, budget=budget, timeout=timeout)
        if opts["resume"] is not None:
            return self.resume(opts["resume"], queue=opts["queue"], wait=opts["wait"], timeout=timeout)
        if opts["discover_only"]:
            return self.discover()
        if opts["dry_run"]:
            return self.dry_run(size=size, budget=budget, include_new=opts["include_new"])
        self.require_preflight()
        batch = running.create_batch(size=size, budget_usd=budget, include_new=opts["include_new"])
        if opts["queue"]:
            try:
                running.enqueue_batch(batch=batch)
            except running.BrokerUnavailable as exc:
                raise CommandError(f"Batch #{batch.pk} failed: {exc}", returncode=EXIT_ERROR) from None
            self.say(f"Batch #{batch.pk} queued for the workers.")
            if not opts["wait"]:
                if self.as_json:
                    self.stdout.write(json.dumps(self.report(batch)))
                return
            batch = self.follow(batch, timeout=timeout)
        else:
            self.say(f"Batch #{batch.pk}: drafting in this process with {batch.model}.")
            batch = running.run_inline(batch=batch, on_item=self.show_item)
        return self.finish(batch)

    # --- modes ------------------------------------------------------------------------------------

    def resume(self, batch_id: int, *, queue: bool, wait: bool, timeout: float):
        batch = Batch.objects.filter(pk=batch_id).first()
        if batch is None:
            raise CommandError(f"There is no batch #{batch_id}.", returncode=EXIT_ERROR)
        self.require_preflight()
        if queue:
            try:
                batch = launching.resume(batch=batch)
            except launching.LaunchRefused as exc:
                raise CommandError(str(exc), returncode=EXIT_ERROR) from None
            except running.BrokerUnavailable as exc:
                raise CommandError(f"Batch #{batch.pk} was not resumed: {exc}", returncode=EXIT_ERROR) from None
            self.say(f"Batch #{batch.pk} resumed and queued for the workers.")
            if not wait:
                if self.as_json:
                    self.stdout.write(json.dumps(self.report(batch)))
                return
            return self.finish(self.follow(batch, timeout=timeout))
        refusal = launching.why_not_resumable(batch)
        if refusal:
            raise CommandError(refusal, returncode=EXIT_ERROR)
        try:
            batch = running.resume_batch(batch=batch)
        except running.NotResumable as exc:
            raise CommandError(str(exc), returncode=EXIT_ERROR) from None
        self.say(f"Batch #{batch.pk}: resuming in this process with {batch.model}.")
        return self.finish(running.run_inline(batch=batch, on_item=self.show_item))

    def discover(self):
        from topics.discovery import run_as_dict, run_discovery, summary_lines

        run = run_discovery()
        if self.as_json:
            self.stdout.write(json.dumps(run_as_dict(run)))
        else:
            self.stdout.write("\n".join(summary_lines(run)))
        if run.status == "failed":
            raise CommandError("discovery failed for every source", returncode=EXIT_ERROR)

    def dry_run(self, *, size: int, budget: Decimal, include_new: bool):
        try:
            plan = plan_batch(size=size, include_new=include_new)
        except PriceMissing as exc:
            raise CommandError(str(exc), returncode=EXIT_ERROR) from None
        if not plan.items:
            raise CommandError(
                "Nothing to select: no approved topic is left that no draft has used yet "
                "(approve topics in the admin, import some, or use --include-new).",
                returncode=EXIT_ERROR,
            )
        if self.as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "batch": None,
                        "dry_run": True,
                        "status": "dry_run",
                        "budget_usd": money(budget),
                        "spent_usd": money(Decimal(0)),
                        "estimated_cost_usd": money(plan.estimated_cost_usd),
                        "items": [
                            {
                                "topic": item.topic.pk,
                                "title": item.topic.title,
                                "category": item.topic.category.slug,
                                "score": item.topic.score,
                                "status": "selected",
                                "cost_usd": money(item.estimated_cost_usd),
                                "subject": None,
                            }
                            for item in plan.items
                        ],
                    }
                )
            )
            return
        self.stdout.write(f"Dry run: {len(plan.items)} topics selected across {len(plan.categories)} categories "
                          f"(model {plan.model}). No API was called and nothing was charged.")
        for number, item in enumerate(plan.items, start=1):
            topic = item.topic
            self.stdout.write(
                f"{number:>3}. [{topic.category.slug}] {topic.title} (score {topic.score:g}, "
                f"up to ${money(item.estimated_cost_usd)})"
            )
        remaining = monthly_remaining()
        self.stdout.write(f"Estimated cost: ${money(plan.estimated_cost_usd)} (upper bound) of a ${money(budget)} budget; "
                          f"${money(budget - plan.estimated_cost_usd)} would remain.")
        if remaining is not None:
            self.stdout.write(f"Monthly cap: ${money(remaining)} left this month.")

    def require_preflight(self):
        errors = [c for c in run_checks() if c.status == ERROR]
        if errors:
            details = "; ".join(f"{c.name}: {c.detail}" for c in errors)
            raise CommandError(f"Preflight failed, no batch was started: {details}", returncode=EXIT_ERROR)

    def follow(self, batch: Batch, *, timeout: float) -> Batch:
        """Follow the batch to its end, riding out database blips; give up (exit 1) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        outage: str | None = None
        while True:
            try:
                batch.refresh_from_db()
                for newsletter in batch.newsletters.select_related("topic__category").exclude(pk__in=seen):
                    if newsletter.status not in Newsletter.OPEN_STATUSES:
                        seen.add(newsletter.pk)
                        self.show_item(newsletter)
                outage = None
                if batch.is_finished:
                    return batch
            except (OperationalError, InterfaceError) as exc:
                outage = first_line(exc)
                if not connection.in_atomic_block:
                    connection.close()  # reconnect on the next poll
            if time.monotonic() >= deadline:
                why = f" (the database is unavailable: {outage})" if outage else ""
                raise CommandError(
                    f"Stopped following batch #{batch.pk} after {timeout:g} s{why}; it goes on without this "
                    f"command. Follow it on the batch page, or resume it later with `runbatch --resume {batch.pk}`.",
                    returncode=EXIT_ERROR,
                )
            time.sleep(POLL_SECONDS)

    # --- economy batches ---------------------------------------------------------------------------

    @staticmethod
    def delivery(opts) -> str:
        return opts.get("delivery") or settings.BATCH_DELIVERY

    def economy(self, opts, *, size: int, budget: Decimal, timeout: float):
        """Submit one Message Batch (in this process, or through the workers with --queue); with --wait, follow
        it here to the end, polling with backoff (no broker needed)."""
        from batches import economy

        self.require_preflight()
        batch = running.create_batch(size=size, budget_usd=budget, include_new=opts["include_new"],
                                     delivery=Batch.Delivery.ECONOMY)
        if opts["queue"]:
            try:
                running.enqueue_batch(batch=batch)
            except running.BrokerUnavailable as exc:
                raise CommandError(f"Batch #{batch.pk} failed: {exc}", returncode=EXIT_ERROR) from None
            self.say(f"Batch #{batch.pk} queued for the workers, to be submitted as one Message Batch.")
        else:
            batch = economy.submit(batch_id=batch.pk)
            shown = economy.progress(batch_id=batch.pk)
            if shown is not None and shown.anthropic_batch_id:
                self.say(f"Batch #{batch.pk}: {shown.total} request(s) with Anthropic as {shown.anthropic_batch_id} "
                         f"(half price; results by {shown.expires_at:%Y-%m-%d %H:%M} UTC at the latest).")
        if batch.is_finished:
            return self.finish(batch)
        if not opts["wait"]:
            if self.as_json:
                self.stdout.write(json.dumps(self.report(batch)))
            else:
                self.stdout.write(f"Follow it with `runbatch --economy --wait` or on the batch page; cancel it with "
                                  f"`runbatch --cancel {batch.pk}`.")
            return
        try:
            batch = economy.follow(batch_id=batch.pk, on_item=self.show_item, timeout=timeout)
        except TimeoutError:
            raise CommandError(
                f"Stopped following batch #{batch.pk} after {timeout:g} s; it goes on with Anthropic and is collected "
                "by the periodic poll. Follow it on the batch page.", returncode=EXIT_ERROR) from None
        return self.finish(batch)

    def cancel_economy(self, batch_id: int):
        from batches import economy

        try:
            batch = economy.cancel(batch_id=batch_id)
        except economy.NotCancelable as exc:
            raise CommandError(str(exc), returncode=EXIT_ERROR) from None
        if self.as_json:
            self.stdout.write(json.dumps(self.report(batch)))
        else:
            self.stdout.write(f"Batch #{batch.pk}: cancel sent. Requests already answered are still settled when "
                              "the results come in; the rest are released.")

    # --- output -----------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        if not self.as_json:
            self.stdout.write(line)

    def show_item(self, newsletter: Newsletter) -> None:
        """One finished item: a counter line that redraws in place on a terminal, plain lines otherwise."""
        if self.as_json:
            return
        self.items_shown = getattr(self, "items_shown", 0) + 1
        if getattr(self, "items_total", None) is None:  # a batch's item count is fixed once it has started
            self.items_total = Newsletter.objects.filter(batch_id=newsletter.batch_id).count()
        total = self.items_total
        label = newsletter.subject or newsletter.error or newsletter.get_status_display()
        line = (f"[{self.items_shown}/{total}] {newsletter.get_status_display()}: {newsletter.topic.title[:60]} "
                f"(${money(newsletter.cost_usd)}) — {label[:100]}")
        if sys.stdout.isatty():
            bar = "#" * round(20 * self.items_shown / max(total, 1))
            self.stdout.write(f"\r\033[K{line}\n[{bar:<20}] {self.items_shown}/{total}", ending="")
            self.stdout.flush()
            if self.items_shown == total:
                self.stdout.write("")
        else:
            self.stdout.write(line)

    def report(self, batch: Batch) -> dict:
        items = batch.newsletters.select_related("topic__category").order_by("position", "pk")
        return {
            "batch": batch.pk,
            "dry_run": False,
            "status": batch.status,
            "budget_usd": money(batch.budget_usd),
            "spent_usd": money(batch.spent_usd()),
            "estimated_cost_usd": money(batch.estimated_cost_usd),
            "items": [
                {
                    "topic": n.topic_id,
                    "title": n.topic.title,
                    "category": n.topic.category.slug,
                    "score": n.topic.score,
                    "status": n.status,
                    "cost_usd": money(n.cost_usd),
                    "subject": n.subject or None,
                }
                for n in items
            ],
        }

    def finish(self, batch: Batch):
        if self.as_json:
            self.stdout.write(json.dumps(self.report(batch)))
        else:
            self.stdout.write(f"Batch #{batch.pk}: {batch.status_reason or batch.get_status_display()} "
                              f"Spent ${money(batch.spent_usd())} of ${money(batch.budget_usd)}.")
        if batch.status == Batch.Status.BUDGET_EXHAUSTED:
            raise CommandError("stopped by the budget", returncode=EXIT_BUDGET)
        if batch.status in (Batch.Status.PARTIAL,) or (
            batch.status == Batch.Status.FAILED and batch.newsletters.exists()
        ):
            raise CommandError("finished with failed items", returncode=EXIT_FAILED_ITEMS)
        if batch.status == Batch.Status.FAILED:
            raise CommandError(batch.status_reason or "batch failed", returncode=EXIT_ERROR)
