import pytest

from alignbook.data import data_dir


@pytest.fixture(scope="session")
def local_data():
    "The local data directory; tests that read real data are skipped only when there is none on this machine."
    d = data_dir()
    if d is None:
        pytest.skip("no local data directory (set ALIGNBOOK_DATA)")
    return d
