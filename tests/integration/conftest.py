import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server for the whole integration session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
