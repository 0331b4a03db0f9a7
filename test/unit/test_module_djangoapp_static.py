"""
Unit tests of where a release's static files and uploads go when the project's
settings put them elsewhere than the demo does: STATIC_ROOT outside the release
(a link to the live release's files) and MEDIA_ROOT inside it (a link to
shared/media).
"""

import os
import pathlib

import djangoapp_common
import djangoapp_disk
import djangoapp_files
import pytest


@pytest.fixture
def layout(tmp_path):
    layout = djangoapp_disk.Layout(str(tmp_path / "srv" / "shop"))
    (tmp_path / "srv" / "shop" / "shared" / "media").mkdir(parents=True)
    return layout


def new_release(layout, rid, static_files=("site.css",)):
    """A release dir whose preflight staged ``static_files``."""
    rdir = layout.release(rid)
    staging = f"{rdir}/{djangoapp_files.STATIC_STAGING}"
    os.makedirs(staging)
    for name in static_files:
        with open(f"{staging}/{name}", "w", encoding="utf-8") as handle:
            handle.write(name)
    return rdir


def preflight_result(static_root, staged=True):
    return {"static_root": static_root, "collectstatic": {"staged": staged}}


def test_static_root_inside_the_release_gets_the_files(layout):
    rdir = new_release(layout, "r1")
    static_root = f"{rdir}/src/staticfiles"
    placed = djangoapp_files.place_static(layout, rdir, preflight_result(static_root))
    assert placed == static_root
    assert pathlib.Path(static_root, "site.css").read_text() == "site.css"
    assert not os.path.lexists(f"{rdir}/{djangoapp_files.STATIC_STAGING}")


def test_static_root_through_current_is_each_release_own(layout):
    """DJANGO_STATIC_ROOT, <base>/current/static: the files of the release that
    is live; a new release gets its own before it goes live."""
    static_root = f"{layout.current}/static"
    for rid, css in (("r1", "site.css"), ("r2", "new.css")):
        rdir = new_release(layout, rid, static_files=(css,))
        placed = djangoapp_files.place_static(
            layout, rdir, preflight_result(static_root)
        )
        assert placed == f"{rdir}/static"
        assert os.listdir(placed) == [css]
        djangoapp_disk.switch_current(layout, rid)
        assert os.listdir(static_root) == [css]
    assert not os.path.islink(f"{layout.release('r2')}/static")
    loc_root = djangoapp_files.map_to_current(layout, "r2", static_root)
    assert loc_root == static_root


def test_static_root_outside_becomes_a_link_to_the_live_release(layout, tmp_path):
    static_root = str(tmp_path / "var" / "www" / "shop" / "static")
    rdir = new_release(layout, "r1")
    placed = djangoapp_files.place_static(layout, rdir, preflight_result(static_root))
    assert placed == f"{rdir}/{djangoapp_files.STATIC_KEPT}"
    assert os.readlink(static_root) == f"{layout.current}/static"
    djangoapp_disk.switch_current(layout, "r1")
    assert pathlib.Path(static_root, "site.css").read_text() == "site.css"
    # The next release keeps the link and brings its own files.
    rdir2 = new_release(layout, "r2", static_files=("new.css",))
    djangoapp_files.place_static(layout, rdir2, preflight_result(static_root))
    djangoapp_disk.switch_current(layout, "r2")
    assert os.listdir(static_root) == ["new.css"]


def test_static_location_of_a_release_with_static_outside(layout, tmp_path):
    static_root = str(tmp_path / "www" / "static")
    rdir = new_release(layout, "r1")
    djangoapp_files.place_static(layout, rdir, preflight_result(static_root))
    djangoapp_common.write_json_atomic(
        f"{rdir}/release.json",
        {"static_url": "/static/", "static_root": static_root, "media_url": None},
    )
    djangoapp_disk.switch_current(layout, "r1")
    location = djangoapp_files.static_location({"base_dir": layout.base})
    assert location["static"] == {"url": "/static/", "path": f"{layout.current}/static"}


@pytest.mark.parametrize("kind", ["files", "file", "foreign link"])
def test_static_root_that_is_something_else_stops_the_release(layout, tmp_path, kind):
    static_root = tmp_path / "www" / "static"
    static_root.parent.mkdir()
    if kind == "files":
        static_root.mkdir()
        (static_root / "old.css").write_text("old")
    elif kind == "file":
        static_root.write_text("not a directory")
    else:
        static_root.symlink_to(tmp_path / "elsewhere")
    rdir = new_release(layout, "r1")
    with pytest.raises(djangoapp_common.StepFailed, match=f"STATIC_ROOT {static_root}"):
        djangoapp_files.place_static(layout, rdir, preflight_result(str(static_root)))
    # Nothing changed, and the staged files are gone with the failed release.
    if kind == "files":
        assert [p.name for p in static_root.iterdir()] == ["old.css"]
    assert not os.path.lexists(f"{rdir}/{djangoapp_files.STATIC_STAGING}")


def test_an_empty_static_root_directory_is_replaced_by_the_link(layout, tmp_path):
    static_root = tmp_path / "www" / "static"
    static_root.mkdir(parents=True)
    rdir = new_release(layout, "r1")
    djangoapp_files.place_static(layout, rdir, preflight_result(str(static_root)))
    assert static_root.is_symlink()


def test_media_root_inside_the_release_links_to_shared_media(layout):
    rdir = new_release(layout, "r1")
    media_root = f"{rdir}/src/media"
    os.makedirs(media_root)
    pathlib.Path(media_root, ".gitkeep").touch()
    app = {"user": "nobody"}
    assert (
        djangoapp_files.prepare_media_root(app, layout, rdir, media_root) == media_root
    )
    assert os.readlink(media_root) == layout.shared_media
    # Again: already a link to shared/media.
    assert (
        djangoapp_files.prepare_media_root(app, layout, rdir, media_root) == media_root
    )
    assert os.readlink(media_root) == layout.shared_media


def test_media_root_elsewhere_is_made_for_the_app_once(layout, tmp_path):
    rdir = new_release(layout, "r1")
    uploads = tmp_path / "var" / "uploads"
    app = {"user": "nobody"}
    assert djangoapp_files.prepare_media_root(app, layout, rdir, str(uploads)) == str(
        uploads
    )
    assert uploads.is_dir() and not uploads.is_symlink()
    assert uploads.owner() == "nobody"
    (uploads / "kept.txt").write_text("kept")
    djangoapp_files.prepare_media_root(app, layout, rdir, str(uploads))
    assert (uploads / "kept.txt").read_text() == "kept"
    assert djangoapp_files.prepare_media_root(app, layout, rdir, None) is None
