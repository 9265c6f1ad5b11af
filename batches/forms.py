"""Forms of the editor's desk: the options of a new batch and of a resumed one."""
from __future__ import annotations

from decimal import Decimal

from django import forms

from topics.selection import MAX_POOL_IDS


def parse_ids(value: str, *, limit: int = MAX_POOL_IDS) -> tuple[int, ...]:
    parts = [p.strip() for p in (value or "").split(",") if p.strip()]
    if len(parts) > limit:
        raise forms.ValidationError(f"At most {limit} topics can be chosen at once.")
    if not all(p.isascii() and p.isdigit() for p in parts):  # "²".isdigit() is true, int("²") is not
        raise forms.ValidationError("Topic ids must be whole numbers.")
    return tuple(dict.fromkeys(int(p) for p in parts))


class RunBatchForm(forms.Form):
    size = forms.IntegerField(label="Newsletters", min_value=1, max_value=100,
                              widget=forms.NumberInput(attrs={"class": "vIntegerField"}))
    budget_usd = forms.DecimalField(label="Budget (USD)", min_value=Decimal("0.01"), max_digits=10, decimal_places=2,
                                    widget=forms.NumberInput(attrs={"class": "vIntegerField", "step": "0.01"}))
    include_new = forms.BooleanField(label="Also select topics not reviewed yet", required=False)
    topics = forms.CharField(required=False, widget=forms.HiddenInput)
    selection = forms.CharField(required=False, widget=forms.HiddenInput)
    dry_run = forms.BooleanField(label="Dry run: show what would be drafted, create nothing, spend nothing",
                                 required=False)
    delivery = forms.ChoiceField(choices=[("now", "Now"), ("economy", "Economy")], required=False)

    def clean_topics(self) -> tuple[int, ...]:
        return parse_ids(self.cleaned_data["topics"])

    def clean_selection(self) -> tuple[int, ...]:
        return parse_ids(self.cleaned_data["selection"], limit=100)


class ResumeBatchForm(forms.Form):
    # As many places as the ledger keeps: a budget set from the command line may have more than cents.
    budget_usd = forms.DecimalField(label="Budget (USD)", min_value=Decimal("0.01"), max_digits=14, decimal_places=6,
                                    widget=forms.NumberInput(attrs={"class": "vIntegerField", "step": "0.01"}))
    dry_run = forms.BooleanField(label="Dry run: show what would be drafted, change nothing, spend nothing",
                                 required=False)
