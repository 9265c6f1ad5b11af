from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.management.base import CommandError
from django.db import InterfaceError, OperationalError, connection
from django.utils.text import Truncator

from newsroom.commands import ContractCommand

from batches import launching, running
from batches.grounding import cited_sources
from batches.ledger import monthly_remaining
from batches.models import Batch, Newsletter
from batches.money import format_usd
from batches.planning import estimate_topics, plan_batch
from batches.preflight import ERROR, run_checks
from batches.pricing import PriceMissing, to_money

EXIT_ERROR, EXIT_BUDGET, EXIT_FAILED_ITEMS = 1, 3, 4
MIN_SIZE, MAX_SIZE = 1, 100
POLL_SECONDS = 0.5
DEFAULT_TIMEOUT, MAX_TIMEOUT = 1800.0, 7 * 86400
EXIT_CODES = """exit codes:
  0  done: every item drafted (or a dry run)
  1  error: bad arguments, failed preflight, nothing to select, broker down with --queue
  3  stopped by the budget
  4  finished with some items failed for other reasons

With --json every outcome, errors included, prints exactly one JSON object on stdout;
an error's object has "status": "error" and "error": the message."""


DELIVERY_NOTES = {
    "now": "now (Messages API, drafts within minutes)",
    "economy": "economy (one Message Batch at half price, results within 24 h)",
}


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{error.__class__.__name__}: {text.splitlines()[0][:160]}" if text else error.__class__.__name__


def material_note(plan) -> str:
    """What the estimate knows of the topics' source material."""
    pending = plan.material_pending
    if not pending:
        return "Source material: what is already fetched for these topics is counted in the estimate."
    return (f"Source material: not fetched yet for {pending} of the {len(plan.items)} topics; the estimate counts "
            f"the full {settings.MATERIAL_MAX_TOKENS:,} tokens of material for each of them.")


def money(value: Decimal) -> str:
    return str(to_money(Decimal(value)))


def _shown(value: object) -> str:
    text = str(value).strip()
    return repr(text if len(text) <= 40 else f"{text[:39]}…")


def _number(value: object, *, convert, accept, allowed: str):
    """`value` converted, when it converts and `accept` takes it; otherwise one line: what is allowed, what was given."""
    try:
        number = convert(str(value).strip())
    except (ValueError, InvalidOperation):
        raise CommandError(f"{allowed}, got {_shown(value)}", returncode=EXIT_ERROR) from None
    if not accept(number):
        raise CommandError(f"{allowed}, got {_shown(value)}", returncode=EXIT_ERROR)
    return number


def parse_budget(value: object) -> Decimal:
    """A budget in dollars: a finite number from MIN_BUDGET_USD to MAX_BUDGET_USD (the settings' bounds, which the
    budget column holds with room to spare), rounded to the ledger's six decimal places."""
    low, high = settings.MIN_BUDGET_USD, settings.MAX_BUDGET_USD
    # Checked before rounding: rounding 1e28 to six places needs more digits than Decimal keeps, and NaN compares
    # as nothing at all.
    budget = _number(value, convert=Decimal, accept=lambda b: b.is_finite() and low <= b <= high,
                     allowed=f"--budget must be a number of dollars from ${low} to ${high:,}")
    return to_money(budget)


def parse_size(value: object) -> int:
    """Newsletters in a batch: a whole number from MIN_SIZE to MAX_SIZE."""
    return _number(value, convert=int, accept=lambda n: MIN_SIZE <= n <= MAX_SIZE,
                   allowed=f"--size must be a whole number from {MIN_SIZE} to {MAX_SIZE}")


def parse_timeout(value: object) -> float:
    """How long `--wait` follows a batch: a finite number of seconds above 0, at most MAX_TIMEOUT."""
    return _number(value, convert=float, accept=lambda t: math.isfinite(t) and 0 < t <= MAX_TIMEOUT,
                   allowed=f"--timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:,}")


class Command(ContractCommand):
    help = "Run a batch: diversity selection, then one newsletter draft per topic (in-process or on the workers)."
    epilog = EXIT_CODES

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Show the selection and the estimated cost only.")
        parser.add_argument("--size", default=None, help=f"Newsletters in the batch ({MIN_SIZE}-{MAX_SIZE}).")
        parser.add_argument("--budget", default=None, help="Budget in USD for this batch (default BATCH_BUDGET_USD).")
        parser.add_argument("--include-new", action="store_true", help="Also select topics not yet reviewed.")
        parser.add_argument("--discover-only", action="store_true", help="Run discovery and stop.")
        parser.add_argument("--queue", action="store_true", help="Hand the batch to the Celery workers.")
        parser.add_argument("--wait", action="store_true", help="With --queue: follow the batch to its end.")
        parser.add_argument("--timeout", default=None, metavar="SECONDS",
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
        self.dry = opts["dry_run"]
        size = parse_size(opts["size"] if opts["size"] is not None else settings.BATCH_SIZE)
        budget = self.budget = parse_budget(opts["budget"] if opts["budget"] is not None else settings.BATCH_BUDGET_USD)
        timeout = DEFAULT_TIMEOUT if opts["timeout"] is None else parse_timeout(opts["timeout"])
        economy = self.delivery(opts) == "economy" and not (opts["dry_run"] or opts["discover_only"] or opts["resume"])
        if opts["wait"] and not (opts["queue"] or economy):
            raise CommandError("--wait only goes with --queue", returncode=EXIT_ERROR)
        if opts["timeout"] is not None and not opts["wait"]:
            raise CommandError("--timeout only goes with --wait", returncode=EXIT_ERROR)
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
            return self.dry_run(size=size, budget=budget, include_new=opts["include_new"],
                                delivery=self.delivery(opts))
        self.require_preflight()
        batch = self.batch = running.create_batch(size=size, budget_usd=budget, include_new=opts["include_new"])
        if opts["queue"]:
            try:
                running.enqueue_batch(batch=batch)
            except running.BrokerUnavailable as exc:
                raise CommandError(f"Batch #{batch.pk} failed: {exc}", returncode=EXIT_ERROR) from None
            self.say(f"Batch #{batch.pk} queued for the workers.")
            if not opts["wait"]:
                if self.as_json:
                    self.write_json(self.report(batch))
                return
            batch = self.follow(batch, timeout=timeout)
        else:
            self.say(f"Batch #{batch.pk}: drafting in this process with {batch.model}.")
            batch = running.run_inline(batch=batch, on_item=self.show_item)
        return self.finish(batch)

    # --- modes ------------------------------------------------------------------------------------

    def resume(self, batch_id: int, *, queue: bool, wait: bool, timeout: float):
        batch = self.batch = Batch.objects.filter(pk=batch_id).first()
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
                    self.write_json(self.report(batch))
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
        from topics.discovery import run_as_dict, run_discovery, run_problem, summary_lines

        run = run_discovery()
        if self.as_json:
            self.write_json(run_as_dict(run))
        else:
            self.stdout.write("\n".join(summary_lines(run)))
        if problem := run_problem(run):
            raise CommandError(f"discovery failed: {problem}", returncode=EXIT_ERROR)

    def dry_run(self, *, size: int, budget: Decimal, include_new: bool, delivery: str):
        try:
            now_plan = plan_batch(size=size, include_new=include_new)
            # Both deliveries' estimates, as the confirmation page shows them; the chosen one is the estimate.
            economy_plan = replace(
                estimate_topics(topics=now_plan.topics, model=now_plan.model,
                                max_tokens=settings.ANTHROPIC_MAX_TOKENS, batch_api=True),
                left_out=now_plan.left_out)
        except PriceMissing as exc:
            raise CommandError(str(exc), returncode=EXIT_ERROR) from None
        plan = economy_plan if delivery == Batch.Delivery.ECONOMY else now_plan
        estimates = {Batch.Delivery.NOW: now_plan.estimated_cost_usd,
                     Batch.Delivery.ECONOMY: economy_plan.estimated_cost_usd}
        if not plan.items:
            raise CommandError(
                "Nothing to select: no approved topic is left that no draft has used yet "
                "(approve topics in the admin, import some, or use --include-new). "
                + plan.left_out.describe(),
                returncode=EXIT_ERROR,
            )
        if self.as_json:
            self.write_json(
                {
                    "batch": None,
                    "dry_run": True,
                    "status": "dry_run",
                    "budget_usd": money(budget),
                    "spent_usd": money(Decimal(0)),
                    "estimated_cost_usd": money(plan.estimated_cost_usd),
                    "delivery": str(delivery),
                    "estimates_usd": {str(kind): money(value) for kind, value in estimates.items()},
                    "items": [
                        {
                            "topic": item.topic.pk,
                            "title": item.topic.title,
                            "category": item.topic.category.slug,
                            "score": item.topic.score,
                            "status": "selected",
                            "cost_usd": money(item.estimated_cost_usd),
                            "subject": None,
                            "sources": [],
                            "flags": [],
                        }
                        for item in plan.items
                    ],
                    "left_out": plan.left_out.as_dict(),
                }
            )
            return
        self.stdout.write(f"Dry run: {len(plan.items)} topics selected across {len(plan.categories)} categories "
                          f"(model {plan.model}). No API was called and nothing was charged.")
        for number, item in enumerate(plan.items, start=1):
            topic = item.topic
            self.stdout.write(
                f"{number:>3}. [{topic.category.slug}] {topic.title} (score {topic.score:g}, "
                f"up to {format_usd(item.estimated_cost_usd)})"
            )
        self.stdout.write(f"Candidates: {plan.left_out.describe()}")
        self.stdout.write(material_note(plan))
        remaining = monthly_remaining()
        self.stdout.write(f"Estimated cost: {format_usd(plan.estimated_cost_usd)} (upper bound, {delivery}) of a "
                          f"{format_usd(budget)} budget; {format_usd(budget - plan.estimated_cost_usd)} would remain.")
        other = Batch.Delivery.NOW if delivery == Batch.Delivery.ECONOMY else Batch.Delivery.ECONOMY
        self.stdout.write(f"Delivery: {DELIVERY_NOTES[delivery]}, up to {format_usd(estimates[delivery])}; "
                          f"{DELIVERY_NOTES[other]} would be up to {format_usd(estimates[other])}.")
        if remaining is not None:
            self.stdout.write(f"Monthly cap: {format_usd(remaining)} left this month.")

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
                self.write_json(self.report(batch))
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
            self.write_json(self.report(batch))
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
        line = (f"[{self.items_shown}/{total}] {newsletter.get_status_display()}: "
                f"{Truncator(newsletter.topic.title).chars(60)} ({format_usd(newsletter.cost_usd)}) — "
                f"{Truncator(label).chars(100)}")
        if sys.stdout.isatty():
            bar = "#" * round(20 * self.items_shown / max(total, 1))
            self.stdout.write(f"\r\033[K{line}\n[{bar:<20}] {self.items_shown}/{total}", ending="")
            self.stdout.flush()
            if self.items_shown == total:
                self.stdout.write("")
        else:
            self.stdout.write(line)

    def report(self, batch: Batch) -> dict:
        items = (batch.newsletters.select_related("topic__category").prefetch_related("flags")
                 .order_by("position", "pk"))
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
                    "sources": [{"n": s["n"], "url": s["url"], "title": s["title"]} for s in cited_sources(n)],
                    "flags": [{"kind": f.kind, "text": f.text} for f in n.flags.all() if f.is_open],
                }
                for n in items
            ],
        }

    def json_error(self, message: str) -> dict:
        """The contract's object for a failure: the batch's report when there is a batch, with the error."""
        batch = getattr(self, "batch", None)
        if batch is not None:
            batch.refresh_from_db()
            return {**self.report(batch), "status": "error", "error": message}
        return self.json_error_fallback(message, None)

    def json_error_fallback(self, message: str, exc: Exception | None) -> dict:
        """The error object from what is known without the database (which may be what failed)."""
        batch = getattr(self, "batch", None)
        budget = getattr(self, "budget", None)
        dry = getattr(self, "dry", None)
        if dry is None:  # the arguments were refused before the command started
            dry = any(len(a) >= 5 and "--dry-run".startswith(a) for a in getattr(self, "_argv", [])[2:])
        nothing = money(Decimal(0)) if batch is None else None  # no batch: nothing spent or planned
        return {
            "batch": batch.pk if batch is not None else None,
            "dry_run": bool(dry),
            "status": "error",
            "budget_usd": money(budget if budget is not None else Decimal(settings.BATCH_BUDGET_USD)),
            "spent_usd": nothing,
            "estimated_cost_usd": nothing,
            "items": [],
            "error": message,
        }

    def finish(self, batch: Batch):
        if batch.status == Batch.Status.FAILED and not batch.newsletters.exists():
            # Nothing was drafted (nothing to select, no price): an error, reported as one (--json: the error object).
            raise CommandError(f"Batch #{batch.pk} failed: {batch.status_reason or 'no reason given'}",
                               returncode=EXIT_ERROR)
        if self.as_json:
            self.write_json(self.report(batch))
        else:
            self.stdout.write(f"Batch #{batch.pk}: {batch.status_reason or batch.get_status_display()} "
                              f"Spent {format_usd(batch.spent_usd())} of {format_usd(batch.budget_usd)}.")
        if batch.status == Batch.Status.BUDGET_EXHAUSTED:
            raise CommandError("stopped by the budget", returncode=EXIT_BUDGET)
        if batch.status in (Batch.Status.PARTIAL,) or (
            batch.status == Batch.Status.FAILED and batch.newsletters.exists()
        ):
            raise CommandError("finished with failed items", returncode=EXIT_FAILED_ITEMS)
