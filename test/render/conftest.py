import pytest

from rendering import Renderer


@pytest.fixture(scope="session")
def renderer(tmp_path_factory):
    return Renderer(tmp_path_factory.mktemp("render"))
