"""Fixtures shared by several test files."""
import pytest

from tests.matfiles import small_dataset, write_v7


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
    """A small MIRFlickr-layout v7 file of 300 rows (one per test module that asks for it)."""
    path = tmp_path_factory.mktemp('data') / 'mir.mat'
    images, text, labels = small_dataset(n=300)
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    return path
