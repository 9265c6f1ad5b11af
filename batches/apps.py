from django.apps import AppConfig


class BatchesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "batches"
    verbose_name = "Batches and spend"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        # Batches depends on topics, never the other way round: it plugs its cost ledger into discovery here,
        # by name, so that starting a process imports neither the ledger nor discovery's source clients.
        from topics import metering

        metering.use_meter("batches.metering.LedgerMeter")
