import pytest

from tests.helpers import write_random_dataset


@pytest.fixture(scope="session")
def random_dataset(tmp_path_factory):
    """Prefix of a small random-token Megatron dataset shared by the session's tests."""
    return write_random_dataset(str(tmp_path_factory.mktemp("data") / "random_text_document"))


@pytest.fixture
def unused_port():
    from tests.helpers import free_port

    return free_port()
