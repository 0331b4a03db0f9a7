"""
Static and media files of a release: collected files put where STATIC_ROOT
says (or kept in the release, with STATIC_ROOT a link to the live release's),
MEDIA_ROOT made or linked to ``shared/media``, and where Nginx finds both.
"""

import os
import shutil

from djangoapp_build import chown_tree, fix_permissions
from djangoapp_common import StepFailed, inside, user_ids
from djangoapp_disk import Layout

STATIC_STAGING = ".static-staging"
# Where a release keeps its collected files when STATIC_ROOT lies outside it.
STATIC_KEPT = "static"


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def place_static(layout, rdir, result):
    """
    Move the collected files from the staging dir (as root) to STATIC_ROOT when it
    lies inside the release (or in ``<base>/current``, which the release is once
    live: the engine's DJANGO_STATIC_ROOT); else keep them in
    ``releases/<id>/static`` and make STATIC_ROOT a link to the live release's
    copy (link_static_root).
    """
    staging = os.path.join(rdir, STATIC_STAGING)
    collected = (result.get("collectstatic") or {}).get("staged")
    if not collected or not os.path.isdir(staging):
        if os.path.lexists(staging):
            shutil.rmtree(staging)
        return None
    static_root = os.path.abspath(result["static_root"])
    target = os.path.realpath(static_root)
    if inside(static_root, layout.current):
        # the live release's files, seen through current: this release's own
        target = rdir + static_root[len(layout.current) :]
    elif not inside(target, os.path.realpath(rdir)):
        try:
            link_static_root(layout, static_root)
        except StepFailed:
            shutil.rmtree(staging)
            raise
        target = os.path.join(rdir, STATIC_KEPT)
    chown_tree(staging, os.getuid(), os.getgid())
    fix_permissions(staging)
    if os.path.lexists(target):
        shutil.rmtree(target)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    os.rename(staging, target)
    return target


def link_static_root(layout, static_root):
    """
    Make ``static_root``, a path outside the releases, a link to the live
    release's collected files (``<base>/current/static``): switching ``current``
    switches them too. Raises StepFailed, with nothing changed, when that path is
    something else: a directory with files, a file, or a link to anywhere else.
    """
    target = os.path.join(layout.current, STATIC_KEPT)
    if os.path.islink(static_root):
        if os.readlink(static_root) == target:
            return
        raise StepFailed(
            "preflight",
            f"STATIC_ROOT {static_root} is a link to {os.readlink(static_root)}, "
            f"not to this app's releases ({target})",
        )
    if os.path.isdir(static_root):
        if os.listdir(static_root):
            raise StepFailed(
                "preflight",
                f"STATIC_ROOT {static_root} is a directory with files in it: each "
                "release keeps its own static files and STATIC_ROOT becomes a link "
                f"to the live release's ({target}); move that directory away "
                "(the release collects the files again)",
            )
        os.rmdir(static_root)
    elif os.path.lexists(static_root):
        raise StepFailed(
            "preflight", f"STATIC_ROOT {static_root} exists and is not a directory"
        )
    os.makedirs(os.path.dirname(static_root), mode=0o755, exist_ok=True)
    os.symlink(target, static_root)


def prepare_media_root(cfg, layout, rdir, media_root):
    """
    Where the app's uploads go. A MEDIA_ROOT inside the release (``BASE_DIR /
    "media"``, Django's usual setting) becomes a link to ``<base>/shared/media``,
    so that uploads outlive the release; what the repository holds there (a
    placeholder) goes. A MEDIA_ROOT elsewhere that does not exist yet is made,
    owned by the app's user. Returns MEDIA_ROOT, or None when there is none.
    """
    if not media_root:
        return None
    media_root = os.path.abspath(media_root)
    if inside(media_root, os.path.realpath(rdir)) or inside(media_root, rdir):
        if os.path.islink(media_root):
            if os.readlink(media_root) == layout.shared_media:
                return media_root
            os.unlink(media_root)
        elif os.path.isdir(media_root):
            shutil.rmtree(media_root)
        elif os.path.lexists(media_root):
            os.unlink(media_root)
        os.makedirs(os.path.dirname(media_root), mode=0o755, exist_ok=True)
        os.symlink(layout.shared_media, media_root)
    elif not os.path.lexists(media_root):
        os.makedirs(os.path.dirname(media_root), mode=0o755, exist_ok=True)
        os.mkdir(media_root, 0o755)
        uid, gid = user_ids(cfg["user"])
        os.chown(media_root, uid, gid)
    return media_root


def map_to_current(layout, rid, path):
    """``releases/<rid>/x`` seen through ``current/x``; other paths as they are."""
    if not path:
        return None
    for root in {
        layout.release(rid),
        os.path.join(os.path.realpath(layout.releases), rid),
    }:
        if inside(path, root):
            return layout.current + path[len(root) :]
    return path


def served_path(url, root):
    """True when Nginx can serve ``url`` from ``root``: a path of this site (not
    an absolute URL such as a CDN's, not the site's root ``/``, which is the
    app's) and a directory to serve it from."""
    if not url or not root or not url.startswith("/") or url.startswith("//"):
        return False
    return url.strip("/") != ""


def static_location(cfg):
    """
    Where Nginx finds the live release's static and media files, from what the
    release's settings say (release.json): ``{"static": {"url", "path"} | None,
    "media": ... | None, "release": id | None}``. None for files the project
    serves otherwise: STATIC_URL on another host (a CDN), no STATIC_ROOT, no
    MEDIA_ROOT, MEDIA_URL empty or ``/``.
    """
    layout = Layout(cfg["base_dir"])
    current = layout.current_id()
    info = layout.release_json(current) if current else None
    if not info:
        return {"static": None, "media": None, "release": None}
    static = media = None
    if served_path(info.get("static_url"), info.get("static_root")):
        static_path = map_to_current(layout, current, info.get("static_root"))
        if os.path.isdir(os.path.join(layout.release(current), STATIC_KEPT)):
            static_path = os.path.join(layout.current, STATIC_KEPT)
        static = {"url": info["static_url"], "path": static_path}
    if served_path(info.get("media_url"), info.get("media_root")):
        media = {
            "url": info["media_url"],
            "path": map_to_current(layout, current, info.get("media_root")),
        }
    return {"static": static, "media": media, "release": current}
