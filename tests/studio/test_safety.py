"""Studio safety without a browser: path checks, the token on a non-loopback host, write headers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from acetune.studio.files import PathRefused, resolve_inside


@pytest.fixture
def root(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "a.txt").write_text("a")
    (tmp_path / "outside.txt").write_text("secret")
    return tmp_path / "data"


@pytest.mark.parametrize("rel", ["../outside.txt", "sub/../../outside.txt", "/etc/passwd", "C:/Windows/win.ini",
                                 "sub\\..\\..\\outside.txt", "%2e%2e/outside.txt", "sub/%2E%2e%2f..", "./sub/a.txt",
                                 "", "sub/a.txt\x00.wav", "link.txt", "linkdir/outside.txt"])
def test_resolve_inside_refuses(root, rel):
    (root / "link.txt").symlink_to(root.parent / "outside.txt")
    (root / "linkdir").symlink_to(root.parent, target_is_directory=True)
    with pytest.raises(PathRefused):
        resolve_inside(root, rel)


def test_resolve_inside_allows_plain_paths_and_inner_symlinks(root):
    (root / "inner.txt").symlink_to(root / "sub" / "a.txt")
    assert resolve_inside(root, "sub/a.txt") == (root / "sub" / "a.txt").resolve()
    assert resolve_inside(root, "inner.txt") == (root / "sub" / "a.txt").resolve()
    assert resolve_inside(root, "100% mix.wav").name == "100% mix.wav"  # a plain percent sign is a name


def test_non_loopback_host_without_token_is_refused_by_the_cli(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    env.pop("ACETUNE_STUDIO_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "acetune", "studio", "--host", "0.0.0.0", "--workdir", str(tmp_path),
                           "--no-open_browser"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: --host 0.0.0.0 lets other machines reach the studio, so it needs a token")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_loopback_detection():
    from acetune.stages.studio import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("::")


def test_token_guards_every_request_on_a_non_loopback_host(tmp_path):
    from starlette.testclient import TestClient

    from acetune.studio.app import TOKEN_COOKIE, Studio, create_app

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "note.txt").write_text("hello")
    app = create_app(Studio(None, tmp_path / "work", token="s3cret-token", loopback=False))
    with TestClient(app, base_url="http://192.168.1.20:7860") as client:
        assert client.get("/api/info").status_code == 401
        assert client.get("/files/work/note.txt").status_code == 401
        assert client.get("/api/info", headers={"X-Acetune-Token": "wrong"}).status_code == 401
        assert client.get("/api/info", headers={"X-Acetune-Token": "s3cret-token"}).status_code == 200
        r = client.get("/?token=s3cret-token", follow_redirects=False)  # the printed URL: sets a cookie
        assert r.status_code == 303 and r.headers["location"] == "/" and TOKEN_COOKIE in r.cookies
        assert client.get("/files/work/note.txt").text == "hello"  # the cookie now authorises
        assert client.post("/api/rescan").status_code == 403  # a write without X-Acetune (cross-site form)
        assert client.post("/api/rescan", headers={"X-Acetune": "1"}).status_code == 200


def test_loopback_studio_refuses_foreign_host_names(tmp_path):
    from starlette.testclient import TestClient

    from acetune.studio.app import Studio, create_app

    app = create_app(Studio(None, tmp_path, loopback=True))
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        assert client.get("/api/info").status_code == 200
    with TestClient(app, base_url="http://rebind.example:7860") as client:
        assert client.get("/api/info").status_code == 403
