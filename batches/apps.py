from django.apps import AppConfig


class BatchesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "batches"
    verbose_name = "Batches and spend"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        # Batches depends on topics, never the other way round: it plugs its cost ledger into discovery here.
        from topics import discovery

        from .metering import LedgerMeter

        discovery.use_meter(LedgerMeter)
