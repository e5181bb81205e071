"""Fixtures shared by several test files."""
import pytest

from tests.matfiles import write_mir_file


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
    """A small MIRFlickr-layout v7 file of 300 rows (one per test module that asks for it)."""
    path = tmp_path_factory.mktemp('data') / 'mir.mat'
    return write_mir_file(path)
