"""The editor's desk: admin views registered by the ModelAdmins' get_urls and wrapped in admin_site.admin_view.

Each view checks its own permission (admin_view only checks that the user is active staff); the domain work is
in launching.py, progress.py, review.py, export.py and dashboard.py.
"""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_POST

from topics.models import Category, SourceDocument
from topics.selection import candidate_pool

from . import export, grounding
from .dashboard import spend_dashboard
from .forms import ResumeBatchForm, RunBatchForm
from .launching import (
    RESUMABLE, BatchNotQueued, LaunchRefused, RunOptions, SelectionChanged, is_resumable, is_stuck, launch_batch,
    plan_resume,
    preview_run, resume,
)
from .ledger import monthly_cap, monthly_remaining
from .models import Batch, DraftFlag, DraftVersion, Newsletter
from .money import format_usd
from .planning import Plan
from .preflight import ERROR, OK, check_anthropic_key, check_broker, check_worker, is_ready, run_checks
from .pricing import PriceMissing
from .progress import batch_progress, explain_error
from .review import (
    PREVIEW_WARN_CHARS, REGENERABLE, REVIEWABLE, SUBJECT_WARN_CHARS, ReviewRefused, length_warnings, next_to_review,
    dismiss_flag, open_flags, request_regeneration, review_draft,
)
from .running import BrokerUnavailable
from .versions import RestoreRefused, restore_version

NOT_DELETED = ("Batches are never deleted: their spend history in the cost ledger is append-only, and each batch "
               "is the record of what was drafted and paid for.")
RUN_PERMISSION = "batches.run_batch"
APPROVE_PERMISSION = "batches.approve_newsletter"


def can_run(request: HttpRequest) -> bool:
    return request.user.has_perm(RUN_PERMISSION)


def can_approve(request: HttpRequest) -> bool:
    return request.user.has_perm(APPROVE_PERMISSION)


def _context(request: HttpRequest, model_admin, *, title: str, **extra) -> dict:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "app_label": model_admin.model._meta.app_label,
        "title": title,
        **extra,
    }


def _budget_view(plan: Plan | None, budget: Decimal) -> dict:
    """Estimate against the budget and the monthly cap, as the confirmation pages show them."""
    estimate = plan.estimated_cost_usd if plan else Decimal("0")
    cap, remaining = monthly_cap(), monthly_remaining()
    return {
        "estimate": estimate,
        "budget": budget,
        # The true share (672% when the estimate is almost seven budgets); only the bar stops at full.
        "estimate_percent": round(float(100 * estimate / budget), 1) if budget else 0,
        "estimate_bar": min(100, round(100 * estimate / budget)) if budget else 0,
        "over_budget": estimate > budget,
        "monthly_cap": cap,
        "monthly_remaining": remaining,
        "over_month": remaining is not None and estimate > remaining,
        "month_spent_out": remaining is not None and remaining <= 0,
    }


def _coverage(plan: Plan | None) -> dict:
    categories = list(Category.objects.all())
    covered = {t.category_id for t in plan.topics} if plan else set()
    return {
        "covered_categories": [c for c in categories if c.pk in covered],
        "missing_categories": [c for c in categories if c.pk not in covered],
        "category_total": len(categories),
    }


def run_readiness() -> dict:
    """What the Run page must say before Confirm: can drafting authenticate, and will a worker pick the batch up?"""
    drafting = check_anthropic_key()
    broker = check_broker()
    worker = check_worker() if broker.status == OK else broker
    return {
        "drafting_check": drafting,
        "drafting_blocked": drafting.status == ERROR,
        "worker_check": worker,
        "worker_missing": worker.status != OK,
    }


# --- New batch ---------------------------------------------------------------------------------------------------

def new_batch(request: HttpRequest, model_admin) -> HttpResponse:
    """Preview a batch (selection, coverage, cost against the budget) and confirm it, or run it dry."""
    if not can_run(request):
        raise PermissionDenied
    defaults = {"size": settings.BATCH_SIZE, "budget_usd": settings.BATCH_BUDGET_USD}
    source = request.POST if request.method == "POST" else request.GET
    form = RunBatchForm({**defaults, **source.dict()})
    plan, options = None, None
    readiness = run_readiness()
    if form.is_valid():
        data = form.cleaned_data
        options = RunOptions(size=data["size"], budget_usd=data["budget_usd"], include_new=data["include_new"],
                             topic_ids=data["topics"], delivery=data["delivery"] or settings.BATCH_DELIVERY)
        if request.method == "POST" and not data["dry_run"] and readiness["drafting_blocked"]:
            model_admin.message_user(request, f"Nothing was started: drafting cannot authenticate "
                                     f"({readiness['drafting_check'].detail}).", messages.ERROR)
        elif request.method == "POST" and not data["dry_run"]:
            try:
                batch = launch_batch(options=options, confirmed_topic_ids=data["selection"], user=request.user)
            except BatchNotQueued as exc:
                model_admin.message_user(
                    request, f"{exc} Batch #{exc.batch.pk} is marked failed and nothing was drafted or spent; "
                    "resume it with “Run batch” once the task queue is back.", messages.ERROR)
                return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[exc.batch.pk]))
            except SelectionChanged as exc:
                model_admin.message_user(request, str(exc), messages.WARNING)
            except (LaunchRefused, PriceMissing) as exc:
                model_admin.message_user(request, str(exc), messages.ERROR)
            else:
                model_admin.log_addition(request, batch, [{"added": {}}])
                model_admin.message_user(
                    request, f"Batch #{batch.pk} is queued: {batch.size} newsletter(s), estimated at most "
                    f"{format_usd(batch.estimated_cost_usd)} of a {format_usd(batch.budget_usd)} budget.",
                    messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[batch.pk]))
        try:
            plan = preview_run(options=options)
        except PriceMissing as exc:
            model_admin.message_user(request, str(exc), messages.ERROR)
        if request.method == "POST" and data["dry_run"]:
            model_admin.message_user(request, "Dry run: this is what would be drafted now. No batch was created "
                                     "and nothing was spent.", messages.INFO)
    topic_ids = options.topic_ids if options else ()
    pool_size = candidate_pool(include_new=options.include_new, topic_ids=topic_ids).count() if options else 0
    from_topics = bool(topic_ids)
    cancel_url = reverse("admin:topics_topic_changelist" if from_topics else "admin:batches_batch_changelist")
    return TemplateResponse(request, "admin/batches/batch/run.html", _context(
        request, model_admin, title="Run a batch",
        form=form,
        plan=plan,
        selection=",".join(str(t.pk) for t in plan.topics) if plan else "",
        topics_param=",".join(str(i) for i in topic_ids),
        from_topics=from_topics,
        chosen_count=len(topic_ids),
        pool_size=pool_size,
        left_out=len(topic_ids) - pool_size if from_topics else 0,
        cancel_url=cancel_url,
        can_confirm=bool(plan and plan.items),
        **readiness,
        **_budget_view(plan, options.budget_usd if options else Decimal(settings.BATCH_BUDGET_USD)),
        **_coverage(plan),
        **economy_delivery_context(plan=plan, options=options),
    ))


# --- Resume a batch ----------------------------------------------------------------------------------------------

def resume_batch_view(request: HttpRequest, model_admin, object_id: str) -> HttpResponse:
    """Confirm resuming a failed or stopped batch: what will be drafted again, and at what cost."""
    if not can_run(request):
        raise PermissionDenied
    batch = get_object_or_404(Batch, pk=object_id)
    batch_url = reverse("admin:batches_batch_change", args=[batch.pk])
    try:
        resume_plan = plan_resume(batch=batch)
    except (LaunchRefused, PriceMissing) as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(batch_url)
    if request.method == "POST":
        form = ResumeBatchForm(request.POST)
        if form.is_valid() and form.cleaned_data["dry_run"]:
            model_admin.message_user(request, "Dry run: this is what would be drafted again. Nothing was changed "
                                     "and nothing was spent.", messages.INFO)
        elif form.is_valid():
            try:
                batch = resume(batch=batch, budget_usd=form.cleaned_data["budget_usd"])
            except BatchNotQueued as exc:
                model_admin.message_user(request, f"{exc} The batch stays failed and nothing was drafted or spent; "
                                         "try again once the task queue is back.", messages.ERROR)
                return HttpResponseRedirect(batch_url)
            except LaunchRefused as exc:
                model_admin.message_user(request, str(exc), messages.ERROR)
            else:
                model_admin.log_change(request, batch, "Resumed from the desk.")
                model_admin.message_user(request, f"Batch #{batch.pk} is queued again.", messages.SUCCESS)
                return HttpResponseRedirect(batch_url)
    else:
        form = ResumeBatchForm(initial={"budget_usd": format(batch.budget_usd.normalize(), "f")})
    budget = form.cleaned_data["budget_usd"] if form.is_bound and form.is_valid() else batch.budget_usd
    return TemplateResponse(request, "admin/batches/batch/resume.html", _context(
        request, model_admin, title=f"Resume batch #{batch.pk}",
        original=batch,
        form=form,
        resume_plan=resume_plan,
        plan=resume_plan.plan,
        cancel_url=batch_url,
        **_budget_view(resume_plan.plan, max(budget - resume_plan.spent_usd, Decimal("0"))),
    ))


# --- Batch progress ----------------------------------------------------------------------------------------------

def batch_page_context(request: HttpRequest, batch: Batch) -> dict:
    """What the batch page adds to the admin's change view: the progress panel and its polling."""
    progress = batch_progress(batch=batch)
    return {
        "progress": progress,
        "progress_data": progress.as_dict(),
        "progress_url": reverse("admin:batches_batch_progress", args=[batch.pk]),
        "draft_url_template": reverse("admin:batches_newsletter_change", args=[0]),
        "topic_url_template": reverse("admin:topics_topic_change", args=[0]),
        "resume_url": reverse("admin:batches_batch_resume", args=[batch.pk]),
        "export_url": reverse("admin:batches_batch_export", args=[batch.pk]),
        "can_run": can_run(request),
        "resumable_statuses": " ".join(RESUMABLE),
        "is_resumable": is_resumable(batch),
        "is_stuck": is_stuck(batch),
        "approved_count": sum(1 for item in progress.items if item.status == Newsletter.Status.APPROVED),
        "not_deleted": NOT_DELETED,
        **economy_page_context(request, batch, progress.economy),
    }


@require_GET
def batch_progress_json(request: HttpRequest, model_admin, object_id: str) -> JsonResponse:
    batch = get_object_or_404(Batch, pk=object_id)
    if not model_admin.has_view_permission(request, batch):
        raise PermissionDenied
    return JsonResponse(batch_progress(batch=batch).as_dict())  # admin_view marks it never_cache


@require_GET
def batch_export(request: HttpRequest, model_admin, object_id: str) -> HttpResponse:
    batch = get_object_or_404(Batch, pk=object_id)
    if not request.user.has_perm("batches.view_newsletter") and not request.user.has_perm("batches.change_newsletter"):
        raise PermissionDenied
    drafts = list(export.approved_drafts(batch=batch))
    if not drafts:
        model_admin.message_user(request, f"Batch #{batch.pk} has no approved draft to export yet.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[batch.pk]))
    return zip_response(export.drafts_zip(drafts), f"batch-{batch.pk}-approved-drafts.zip")


def zip_response(content: bytes, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- Draft review ------------------------------------------------------------------------------------------------

def review_trail(newsletter: Newsletter) -> list[dict]:
    """Who did what to the draft and when, oldest first: drafting, then every admin change and decision."""
    trail = []
    if newsletter.generated_at:
        trail.append({"when": newsletter.generated_at, "who": f"Claude ({newsletter.model or 'model unknown'})",
                      "what": f"Drafted (attempt {newsletter.attempts})."})
    entries = (LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Newsletter),
                                       object_id=str(newsletter.pk))
               .select_related("user").order_by("action_time", "pk"))
    for entry in entries:
        who = entry.user.get_full_name() or entry.user.get_username()
        trail.append({"when": entry.action_time, "who": who, "what": entry.get_change_message() or "Changed."})
    return sorted(trail, key=lambda row: row["when"])


def draft_page_context(request: HttpRequest, newsletter: Newsletter, *, can_edit: bool) -> dict:
    """What the draft page adds to the admin's change view: the rendered preview, decisions, exports, the trail
    and the earlier versions.

    With `can_edit`, the decision buttons submit the change form itself, so the text on screen is saved (or
    refused with the form's errors) before the decision: an edit is never lost to an Approve.
    """
    versions = list(newsletter.versions.select_related("replaced_by").defer("body_markdown")[:50])
    return {
        **grounding_context(request, newsletter),
        "preview_html": export.render_markdown(export.body_with_sources(newsletter)),
        "problem": explain_error(status=newsletter.status, error=newsletter.error),
        "trail": review_trail(newsletter),
        "review_url": reverse("admin:batches_newsletter_review", args=[newsletter.pk]),
        "decide_in_form": can_edit,
        "export_md_url": reverse("admin:batches_newsletter_export", args=[newsletter.pk, "md"]),
        "export_html_url": reverse("admin:batches_newsletter_export", args=[newsletter.pk, "html"]),
        "batch_url": reverse("admin:batches_batch_change", args=[newsletter.batch_id]),
        "topic_url": reverse("admin:topics_topic_change", args=[newsletter.topic_id]),
        "can_approve": can_approve(request) and newsletter.status in REVIEWABLE,
        "can_regenerate": can_run(request) and newsletter.status in REGENERABLE,
        "is_approved": newsletter.status == Newsletter.Status.APPROVED,
        "is_rejected": newsletter.status == Newsletter.Status.REJECTED,
        "length_warnings": length_warnings(subject=newsletter.subject, preview_text=newsletter.preview_text),
        "subject_warn_chars": SUBJECT_WARN_CHARS,
        "preview_warn_chars": PREVIEW_WARN_CHARS,
        "versions": versions,
    }


DECISIONS = {"approve": Newsletter.Status.APPROVED, "approve_next": Newsletter.Status.APPROVED,
             "reject": Newsletter.Status.REJECTED}
DECISION_NAMES = (*DECISIONS, "regenerate")


class UnknownDecision(Exception):
    pass


def check_decision(request: HttpRequest, decision: str) -> None:
    """Approving and rejecting need approve_newsletter; a new draft needs run_batch (it spends money)."""
    if decision not in DECISION_NAMES:
        raise UnknownDecision(decision)
    if not (can_run(request) if decision == "regenerate" else can_approve(request)):
        raise PermissionDenied


def apply_decision(request: HttpRequest, model_admin, newsletter: Newsletter, decision: str) -> HttpResponse:
    """Carry out a checked decision on the draft as saved, and say where to go next."""
    page = reverse("admin:batches_newsletter_change", args=[newsletter.pk])
    if decision in ("approve", "approve_next") and not request.POST.get("confirm_flags"):
        flags = list(open_flags(queryset=Newsletter.objects.filter(pk=newsletter.pk)))
        if flags:  # approving past open flags is a decision of its own: ask first
            return confirm_flagged_approval(request, model_admin, newsletters=[newsletter], flags=flags,
                                            decision=decision)
    try:
        if decision == "regenerate":
            request_regeneration(newsletter=newsletter)
        else:
            review_draft(newsletter=newsletter, status=DECISIONS[decision], user=request.user)
    except ReviewRefused as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(page)
    except BrokerUnavailable as exc:
        model_admin.message_user(request, f"{exc} The draft is unchanged.", messages.ERROR)
        return HttpResponseRedirect(page)
    if decision == "regenerate":
        model_admin.log_change(request, newsletter, "Asked Claude for a new draft.")
        model_admin.message_user(request, "A new draft is on its way; this page shows it once it is ready. The new "
                                 "attempt is charged to the batch's budget; the current text is kept as a version.",
                                 messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[newsletter.batch_id]))
    model_admin.log_change(request, newsletter, "Rejected." if decision == "reject" else "Approved.")
    done = f"Draft {newsletter.get_status_display().lower()}."
    if decision != "approve_next":
        model_admin.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(page)
    following = next_to_review(after=newsletter)
    if following is None:
        model_admin.message_user(request, f"{done} No other draft is waiting for review.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[newsletter.batch_id]))
    model_admin.message_user(request, f"{done} Next draft to review: “{following}”.", messages.SUCCESS)
    return HttpResponseRedirect(reverse("admin:batches_newsletter_change", args=[following.pk]))


@require_POST
def review_newsletter(request: HttpRequest, model_admin, object_id: str) -> HttpResponse:
    """A decision from someone who may decide but not edit (the page has no form to save for them)."""
    newsletter = get_object_or_404(Newsletter, pk=object_id)
    decision = request.POST.get("decision", "")
    try:
        check_decision(request, decision)
    except UnknownDecision:
        return HttpResponseBadRequest("Unknown decision.")
    return apply_decision(request, model_admin, newsletter, decision)


# --- Earlier versions of a draft ---------------------------------------------------------------------------------

def _version(newsletter_id: str, version_id: str, *, allowed) -> DraftVersion:
    """The version, if it belongs to that draft (404 otherwise) and `allowed(draft)` (403 otherwise)."""
    version = get_object_or_404(DraftVersion.objects.select_related("newsletter", "replaced_by"), pk=version_id,
                                newsletter_id=newsletter_id)
    if not allowed(version.newsletter):
        raise PermissionDenied
    return version


@require_GET
def draft_version_view(request: HttpRequest, model_admin, object_id: str, version_id: str) -> HttpResponse:
    """One earlier text of a draft, as readers would have seen it, with a button to put it back."""
    version = _version(object_id, version_id, allowed=lambda draft: model_admin.has_view_permission(request, draft))
    newsletter = version.newsletter
    return TemplateResponse(request, "admin/batches/newsletter/version.html", _context(
        request, model_admin, title=f"Earlier version of draft #{newsletter.pk}",
        original=newsletter,
        version=version,
        preview_html=export.render_markdown(version.body_markdown),
        draft_url=reverse("admin:batches_newsletter_change", args=[newsletter.pk]),
        restore_url=reverse("admin:batches_newsletter_restore", args=[newsletter.pk, version.pk]),
        can_restore=model_admin.has_change_permission(request, newsletter)
        and newsletter.status not in Newsletter.OPEN_STATUSES,
    ))


@require_POST
def restore_draft_version(request: HttpRequest, model_admin, object_id: str, version_id: str) -> HttpResponse:
    """Put an earlier text back (an edit: it needs change permission); the current text is kept as a version."""
    version = _version(object_id, version_id, allowed=lambda draft: model_admin.has_change_permission(request, draft))
    newsletter = version.newsletter
    page = reverse("admin:batches_newsletter_change", args=[newsletter.pk])
    try:
        restored = restore_version(version=version, user=request.user, keep_approval=can_approve(request))
    except RestoreRefused as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(page)
    when = timezone.localtime(version.created_at).strftime("%Y-%m-%d %H:%M")
    model_admin.log_change(request, restored, f"Restored the version replaced on {when}.")
    note = "" if restored.status == newsletter.status else " It needs approving again."
    model_admin.message_user(request, f"The version replaced on {when} is back; the text it replaced is kept as a "
                             f"version.{note}", messages.SUCCESS)
    return HttpResponseRedirect(page)


EXPORTS = {
    "md": ("text/markdown; charset=utf-8", export.newsletter_markdown),
    "html": ("text/html; charset=utf-8", export.newsletter_email_html),
}


@require_GET
def export_newsletter(request: HttpRequest, model_admin, object_id: str, fmt: str) -> HttpResponse:
    newsletter = get_object_or_404(Newsletter.objects.select_related("topic__category"), pk=object_id)
    if not model_admin.has_view_permission(request, newsletter):
        raise PermissionDenied
    if fmt not in EXPORTS:
        return HttpResponseBadRequest("Unknown export format.")
    if newsletter.status != Newsletter.Status.APPROVED:
        model_admin.message_user(request, "Only approved drafts can be exported: approve this one first.",
                                 messages.WARNING)
        return HttpResponseRedirect(reverse("admin:batches_newsletter_change", args=[newsletter.pk]))
    content_type, render = EXPORTS[fmt]
    response = HttpResponse(render(newsletter), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.export_basename(newsletter)}.{fmt}"'
    return response


# --- Spend dashboard and system status ------------------------------------------------------------------------

def spend_dashboard_view(request: HttpRequest, model_admin) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    return TemplateResponse(request, "admin/batches/costledgerentry/dashboard.html", _context(
        request, model_admin, title="Spend dashboard", dashboard=spend_dashboard(),
    ))


def system_status_view(request: HttpRequest, model_admin) -> HttpResponse:
    """The checks of `manage.py preflight`, which never include a secret (at most its last four characters)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    checks = run_checks(worker=True)
    return TemplateResponse(request, "admin/batches/batch/system_status.html", _context(
        request, model_admin, title="System status", checks=checks, ready=is_ready(checks), ERROR=ERROR,
    ))


# --- Sources and flags (issue 9) ---------------------------------------------------------------------------------

def web_link(url: str) -> str:
    """`url` when it is an http(s) address, else "": a source's address comes from the web and is shown as a link
    only when following it cannot run anything."""
    return url if (url or "").lower().startswith(("http://", "https://")) else ""


def highlight(sentence: str, text: str):
    """The sentence with the flagged text in <mark>, escaped."""
    at = sentence.find(text) if text else -1
    if at < 0:
        return sentence
    return format_html("{}<mark>{}</mark>{}", sentence[:at], text, sentence[at + len(text):])


def grounding_context(request: HttpRequest, newsletter: Newsletter) -> dict:
    """The draft page's "Check before approving" panel: open and dismissed flags, the numbered sources (cited
    ones marked) and the sources that could not be read, with why."""
    flags = list(newsletter.flags.select_related("dismissed_by"))
    for flag in flags:
        flag.highlighted = highlight(flag.sentence, flag.text)
    cited = {s["n"] for s in grounding.cited_sources(newsletter)}
    unread = list(SourceDocument.objects.filter(topic_id=newsletter.topic_id, status=SourceDocument.Status.FAILED)
                  .order_by("rank", "pk"))
    for document in unread:
        document.href = web_link(document.url)
    return {"grounding": {
        "open_flags": [f for f in flags if f.is_open],
        "dismissed_flags": [f for f in flags if not f.is_open],
        "sources": [{**s, "cited": s["n"] in cited, "href": web_link(s.get("url", ""))}
                    for s in newsletter.sources or []],
        "unread": unread,
        "can_dismiss": can_approve(request) and newsletter.status in REVIEWABLE,
        "topic_url": reverse("admin:topics_topic_change", args=[newsletter.topic_id]),
    }}


@require_POST
def dismiss_flag_view(request: HttpRequest, model_admin, object_id: str, flag_id: str) -> HttpResponse:
    return dismiss_flag_response(request, model_admin, object_id, flag_id)


def dismiss_flag_response(request: HttpRequest, model_admin, object_id, flag_id) -> HttpResponse:
    """One click: the editor checked the flagged text. Needs approve_newsletter; the trail says who and when."""
    if not can_approve(request):
        raise PermissionDenied
    flag = get_object_or_404(DraftFlag.objects.select_related("newsletter"), pk=flag_id, newsletter_id=object_id)
    page = reverse("admin:batches_newsletter_change", args=[flag.newsletter_id])
    if dismiss_flag(flag=flag, user=request.user):
        model_admin.log_change(request, flag.newsletter, f"Dismissed a flag ({flag.get_kind_display().lower()}): "
                                                         f"“{flag.text}”.")
        model_admin.message_user(request, f"Flag dismissed: “{flag.text}”.", messages.SUCCESS)
    else:
        who = flag.dismissed_by.get_username() if flag.dismissed_by else "someone"
        model_admin.message_user(request, f"That flag was already dismissed by {who}.", messages.INFO)
    return HttpResponseRedirect(page + "#desk-grounding")


def confirm_flagged_approval(request: HttpRequest, model_admin, *, newsletters: list[Newsletter],
                             flags: list[DraftFlag], action_ids: list[str] | None = None,
                             decision: str = "approve") -> HttpResponse:
    """Approving drafts that still have open flags: list the flags and ask to confirm (Approve anyway / back)."""
    for flag in flags:
        flag.highlighted = highlight(flag.sentence, flag.text)
    single = newsletters[0] if len(newsletters) == 1 and action_ids is None else None
    response = TemplateResponse(request, "admin/batches/newsletter/approve_flagged.html", _context(
        request, model_admin, title="Approve with open flags?",
        newsletters=newsletters,
        flags=flags,
        single=single,
        action_ids=action_ids or [],
        decision=decision,
        review_url=reverse("admin:batches_newsletter_review", args=[single.pk]) if single else "",
        back_url=(reverse("admin:batches_newsletter_change", args=[single.pk]) if single
                  else reverse("admin:batches_newsletter_changelist")),
    ))
    response.asks_confirmation = True  # a question, not the change form coming back with errors
    return response


# --- Economy batches (Message Batches API) ------------------------------------------------------------------------

def economy_delivery_context(*, plan: Plan | None, options: RunOptions | None) -> dict:
    """Both deliveries for the confirmation page, each with its worst-case estimate."""
    from .planning import estimate_topics

    if not plan or not plan.items:
        return {}
    economy_plan = estimate_topics(topics=plan.topics, model=plan.model, max_tokens=settings.ANTHROPIC_MAX_TOKENS,
                                   batch_api=True)
    return {"deliveries": [
        {"value": "now", "label": "Now", "estimate": plan.estimated_cost_usd,
         "note": "Messages API: drafts arrive in a few minutes."},
        {"value": "economy", "label": "Economy", "estimate": economy_plan.estimated_cost_usd,
         "note": "Message Batches API at half price: results within 24 hours, usually within the hour."},
    ], "delivery": options.delivery if options else settings.BATCH_DELIVERY}


def economy_page_context(request: HttpRequest, batch: Batch, status: dict | None) -> dict:
    """What the batch page shows of an economy batch (`status`: progress.economy_status): where it stands at
    Anthropic, and its Cancel button. The page's polling refreshes the same figures from the progress JSON."""
    if status is None:
        return {}
    return {
        "economy": status,
        "economy_line": status["line"],
        "economy_cancel_url": reverse("admin:batches_batch_cancel_economy", args=[batch.pk]),
        "economy_cancelable": can_run(request) and status["cancelable"],
    }


@require_POST
def cancel_economy_view(request: HttpRequest, model_admin, object_id: str) -> HttpResponse:
    """Cancel an economy batch: what Anthropic already answered is still settled, the rest released."""
    from .economy import NotCancelable, cancel

    if not can_run(request):
        raise PermissionDenied
    batch = get_object_or_404(Batch, pk=object_id)
    try:
        cancel(batch_id=batch.pk)
    except NotCancelable as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
    else:
        model_admin.log_change(request, batch, "Economy batch canceled from the desk.")
        model_admin.message_user(request, f"Batch #{batch.pk}: cancel sent. Requests Anthropic already answered are "
                                 "still settled when the results come in; the rest are released.", messages.SUCCESS)
    return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[batch.pk]))
