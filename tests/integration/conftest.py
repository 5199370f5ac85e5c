import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server for the whole integration session. Flow-run heartbeats off, as
    `tunegate run` has them on its own temporary server (tunegate.adapters.prefect.temporary_api): the server ends with
    the session, and each flow's end would wait up to 1 s for the heartbeat thread."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
