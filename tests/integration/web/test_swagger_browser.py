"""Swagger UI at the gateway's /docs in Debian's headless chromium: it renders every operation of
/openapi.json under the page's self-only Content-Security-Policy, loading nothing from elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port
from tests.integration.servers import serve_gateway

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def docs(base_settings: Any) -> Iterator[tuple[Any, str]]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("needs Debian's chromium and chromium-driver (scripts/services.sh installs them)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with serve_gateway(free_port(), base_settings) as base:
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            yield driver, base
        finally:
            driver.quit()


def test_swagger_ui_renders_every_operation_under_a_self_only_csp(docs: tuple[Any, str]) -> None:
    from selenium.webdriver.common.by import By

    driver, base = docs
    driver.get(f"{base}/docs")
    expected = sum(
        1
        for operations in requests.get(f"{base}/openapi.json", timeout=30).json()["paths"].values()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    )
    deadline = time.monotonic() + 30
    blocks: list[Any] = []
    while time.monotonic() < deadline:
        blocks = driver.find_elements(By.CSS_SELECTOR, ".opblock")
        if len(blocks) >= expected:
            break
        time.sleep(0.2)
    assert len(blocks) == expected and expected > 10
    assert driver.current_url == f"{base}/docs/"
    assert any("/v1/models/{name}:predict" in b.text for b in blocks)
    logs = driver.get_log("browser")
    blocked = [e["message"] for e in logs if "Content Security Policy" in e["message"] and "script" in e["message"]]
    assert not blocked, blocked
    outside = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))"
    )
    assert outside == []
