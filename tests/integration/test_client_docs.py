"""`/docs` works without internet: the Ingress serves Swagger UI's assets itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.fixtures.models import ECHO
from tests.serving import BASE_URL, app_config, deploy

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


@pytest.fixture(scope="module", autouse=True)
def echo_app() -> None:
    deploy(app_config(model=ECHO))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_ingress(page: str) -> None:
    html = httpx.get(f"{BASE_URL}{page}").text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert urls, html
    for url in urls:
        # Same origin only: a path, never a host (a CDN, or "//host/..."), so air-gapped works.
        assert url.startswith("/") and not url.startswith("//"), url
        assert httpx.get(f"{BASE_URL}{url}").status_code == 200, url


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_swagger_ui_renders_predict_in_a_browser_without_internet(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path}",
            # Every host but loopback goes to a closed port: a CDN asset would fail to load.
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            # Virtual time stands still while a fetch is pending, so the spec load is waited for.
            "--virtual-time-budget=30000",
            "--dump-dom",
            f"{BASE_URL}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # Swagger UI rendered the spec: the predict operation's block, with its path and summary.
    assert re.search(r'class="opblock opblock-post[^"]*"', dom), dom[-2000:]
    assert 'data-path="/v1/predict"' in dom
    assert "Classify, detect or segment one image" in dom
