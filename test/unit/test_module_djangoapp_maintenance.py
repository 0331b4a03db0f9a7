"""djangoapp.maintenance through Salt's loader: the page that is the switch, its
message, and what status says of it."""

import os
import pathlib
import threading

import djangoapp_maintenance
import pytest


@pytest.fixture
def shop(make_app):
    return make_app("shop")


def test_off_by_default_and_in_status(mods, shop):
    assert mods["djangoapp.maintenance"]("shop") == {
        "app": "shop",
        "on": False,
        "since": None,
        "message": None,
    }
    assert mods["djangoapp.status"]("shop")["maintenance"]["on"] is False


def test_on_writes_the_page_with_the_message_escaped(mods, shop):
    state = mods["djangoapp.maintenance"](
        "shop", "on", message="Back at <b>2</b> & soon"
    )
    assert state["on"] is True and state["changed"] is True
    assert state["message"] == "Back at <b>2</b> & soon"
    page = shop["maintenance_page"]
    text = pathlib.Path(page).read_text(encoding="utf-8")
    assert (
        '<p id="djangoapp-maintenance">Back at &lt;b&gt;2&lt;/b&gt; &amp; soon</p>'
        in text
    )
    assert oct(os.stat(page).st_mode & 0o777) == "0o644"
    assert not os.path.exists(page + ".tmp")
    assert os.path.isfile(shop["maintenance_flag"])
    status = mods["djangoapp.status"]("shop")["maintenance"]
    assert status["on"] is True and status["since"] == state["since"]


def test_on_again_with_the_same_message_changes_nothing(mods, shop):
    mods["djangoapp.maintenance"]("shop", "on")
    again = mods["djangoapp.maintenance"]("shop", True)
    assert again["changed"] is False
    assert again["message"] == (
        "This site is down for maintenance and will be back shortly."
    )


def test_off_removes_the_page_once(mods, shop):
    mods["djangoapp.maintenance"]("shop", "on")
    off = mods["djangoapp.maintenance"]("shop", "off")
    assert (off["on"], off["changed"]) == (False, True)
    assert not os.path.exists(shop["maintenance_flag"])
    # the page stays: a request that saw the flag an instant before still finds it
    assert os.path.isfile(shop["maintenance_page"])
    assert mods["djangoapp.maintenance"]("shop", False)["changed"] is False


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("shop", "maybe"), {}, "mode 'maybe' must be on or off"),
        (("shop",), {"message": "x"}, "message is given with mode on only"),
        (("shop", "off"), {"message": "x"}, "message is given with mode on only"),
    ],
)
def test_bad_arguments_are_named_and_change_nothing(mods, shop, args, kwargs, error):
    ret = mods["djangoapp.maintenance"](*args, **kwargs)
    assert ret == {"result": False, "error": error}
    assert not os.path.exists(shop["maintenance_flag"])


def test_the_requests_in_flight_are_the_connections_to_the_app_s_socket(tmp_path):
    """Connections waiting to be accepted and accepted ones count until closed;
    those of another socket do not."""
    import socket

    path = str(tmp_path / "gunicorn.sock")
    other = str(tmp_path / "other.sock")
    listeners = []
    for each in (path, other):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(each)
        listener.listen(8)
        listeners.append(listener)
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        assert djangoapp_maintenance.requests_in_flight(path) == 0
        clients[0].connect(path)
        clients[1].connect(path)
        clients[2].connect(other)
        assert djangoapp_maintenance.requests_in_flight(path) == 2  # not accepted
        accepted, _ = listeners[0].accept()
        assert djangoapp_maintenance.requests_in_flight(path) == 2
        accepted.close()
        assert djangoapp_maintenance.requests_in_flight(path) == 1
        waiting, _ = listeners[0].accept()
        threading.Timer(0.3, waiting.close).start()
        done = djangoapp_maintenance.wait_for_requests({"socket": path}, timeout=10)
        assert done["left"] == 0
        assert 0.3 <= done["waited"] < 5
        kept, _ = listeners[1].accept()
        assert djangoapp_maintenance.wait_for_requests({"socket": other}, 0.2) == {
            "waited": pytest.approx(0.2, abs=0.15),
            "left": 1,
        }
        kept.close()
    finally:
        for each in clients + listeners:
            each.close()
