"""The console in a real headless browser (Debian's chromium through chromedriver, driven by Selenium)
against the running local stack: sign in, the demo models, a prediction from the generated form, a batch
file whose bar reaches 100%, a canary split set from the page, an open circuit, text-only rendering of
hostile values, and a wrong key refused.

No browser is downloaded: the test uses /usr/bin/chromium and /usr/bin/chromedriver (``scripts/test``
installs the Debian packages when they are missing) and names both, so Selenium Manager never runs. A
missing browser fails the test with the reason. Screenshots of each view land in
``.kinfer/console-screenshots/`` (``KINFER_SCREENSHOTS`` chooses another folder).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, http
from tests.lifecycle_support import linear_onnx

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("KINFER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("KINFER_CHROMEDRIVER", "/usr/bin/chromedriver"))
SHOTS = Path(os.environ.get("KINFER_SCREENSHOTS", str(ROOT / ".kinfer" / "console-screenshots")))
XSS = "<img src=x onerror=alert(1)>"
WAIT_S = 20


@pytest.fixture(scope="module")
def browser(stack: dict[str, str]) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(
            f"the console's browser tests need Debian's chromium and chromedriver; missing: "
            f"{', '.join(missing)} (apt-get install chromium chromium-driver, or run scripts/test, "
            "which installs them)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    driver.get(f"{stack['gateway']}/console/")
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    problems = [
        e["message"]
        for e in driver.get_log("browser")
        if "Content Security Policy" in e["message"]
        or e["level"] == "SEVERE"
        and "favicon" not in e["message"]
        and "/v1/" not in e["message"]
        and "/v2/" not in e["message"]
    ]
    driver.quit()
    assert not problems, f"the page logged errors (CSP violations or script errors): {problems}"


def wait_for(driver: Any, what: Callable[[], Any], message: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = what()
            if last:
                return last
        except Exception as exc:  # an element that is not there yet, or went stale between renders
            last = exc
        time.sleep(0.1)
    shot(driver, f"failed-{uuid.uuid4().hex[:6]}")
    raise AssertionError(f"{message} (last: {last!r})")


def shot(driver: Any, name: str, width: int = 1280) -> None:
    driver.set_window_size(width, 900)
    driver.execute_script("document.getElementById('toast').textContent = ''")
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def by_css(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def all_css(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def sign_in(driver: Any, key: str) -> None:
    field = wait_for(driver, lambda: by_css(driver, "#key"), "no key field")
    wait_for(driver, lambda: field.is_displayed(), "the sign-in form is not shown")
    field.clear()
    field.send_keys(key)
    by_css(driver, "#signin-form button[type=submit]").click()


def go(driver: Any, view: str) -> None:
    by_css(driver, f'nav button[data-view="{view}"]').click()
    wait_for(driver, lambda: by_css(driver, f"#view-{view}").is_displayed(), f"view {view} not shown")
    if view == "models":  # rendered once loaded: elements found before that would go stale
        wait_for(driver, lambda: " version(s) of " in by_css(driver, "#models-note").text, "models did not load")


def api(stack: dict[str, str], method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
    return http(method, f"{stack['gateway']}{path}", body, key=stack["key"])


def test_a_wrong_key_is_refused_with_a_clear_message(browser: Any) -> None:
    sign_in(browser, "kf_this-key-does-not-exist")
    error = wait_for(browser, lambda: by_css(browser, "#signin-error").text, "no message for a wrong key")
    assert "refused" in error and "invalid or revoked API key" in error, error
    assert by_css(browser, "#nav").is_displayed() is False
    assert browser.execute_script("return sessionStorage.length") == 0
    assert "kf_" not in browser.current_url
    shot(browser, "signin-refused")


def test_sign_in_shows_the_demo_models_with_their_state(browser: Any, stack: dict[str, str]) -> None:
    sign_in(browser, stack["key"])
    wait_for(browser, lambda: all_css(browser, 'article[data-model="iris_classifier"] .badge'), "no demo models")
    for name in ("iris_classifier", "vector_scorer"):
        card = by_css(browser, f'article[data-model="{name}"]')
        assert card.find_element("css selector", ".model-name").text == name
        assert "ready" in card.text
    assert by_css(browser, "#who-name").text.startswith("demo (")
    assert browser.execute_script("return sessionStorage.getItem('kinfer.apiKey')") == stack["key"]
    assert stack["key"] not in browser.current_url
    assert all_css(browser, "button.promote"), "the demo key is admin: promote is offered"


def test_a_prediction_from_the_generated_form(browser: Any) -> None:
    go(browser, "try")
    from selenium.webdriver.support.ui import Select

    wait_for(browser, lambda: len(Select(by_css(browser, "#try-model")).options) >= 2, "no models to pick")
    Select(by_css(browser, "#try-model")).select_by_value("iris_classifier")
    by_css(browser, "#try-pick button[type=submit]").click()
    area = wait_for(browser, lambda: by_css(browser, "#try-inputs textarea"), "no input form from the metadata")
    label = by_css(browser, f'label[for="{area.get_attribute("id")}"]').text
    assert label == area.get_attribute("data-tensor") and "FP32" in by_css(browser, "#try-inputs .note").text
    area.clear()
    area.send_keys("[[5.1, 3.5, 1.4, 0.2]]")
    by_css(browser, "#try-run").click()
    prediction = wait_for(browser, lambda: by_css(browser, "#try-result .prediction").text, "no prediction")
    assert prediction.startswith("[")
    assert by_css(browser, "#try-result .answered-version").text == "1"
    ids = [e.text for e in all_css(browser, "#try-result dd.mono")]
    assert len(ids) == 2 and all(len(i) >= 16 for i in ids), ids  # request and trace ids
    shot(browser, "try-it")
    area.clear()
    area.send_keys('[["not a number"]]')
    by_css(browser, "#try-run").click()
    error = wait_for(browser, lambda: by_css(browser, "#try-result .api-error").text, "no error shown")
    assert error.startswith("400 ") and "request id:" in error, error


def test_a_file_with_a_line_that_is_not_json_is_refused_naming_the_line(browser: Any) -> None:
    go(browser, "batch")
    from selenium.webdriver.support.ui import Select

    wait_for(browser, lambda: len(Select(by_css(browser, "#batch-model")).options) >= 2, "no models to pick")
    by_css(browser, "#batch-file").send_keys(str(ROOT / "examples" / "iris.jsonl"))  # line 4 is broken JSON
    by_css(browser, "#batch-submit").click()
    message = wait_for(browser, lambda: by_css(browser, "#batch-message").text, "no message for a broken file")
    assert message.startswith("line 4 is not JSON"), message


def test_a_batch_file_runs_to_100_percent(browser: Any, tmp_path: Path) -> None:
    go(browser, "batch")
    from selenium.webdriver.support.ui import Select

    rows = ['{"data": [5.1, 3.5, 1.4, 0.2]}', '{"data": [6.7, 3.0, 5.2, 2.3]}'] * 20 + ['{"data": [1.0, 2.0]}']
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    wait_for(browser, lambda: len(Select(by_css(browser, "#batch-model")).options) >= 2, "no models to pick")
    Select(by_css(browser, "#batch-model")).select_by_value("iris_classifier")
    by_css(browser, "#batch-file").send_keys(str(tmp_path / "rows.jsonl"))
    by_css(browser, "#batch-submit").click()
    accepted = wait_for(
        browser,
        lambda: "accepted" in by_css(browser, "#batch-message").text and by_css(browser, "#batch-message").text,
        "the job was not accepted",
    )
    job_id = accepted.split()[1]
    card = f'article[data-job="{job_id}"]'
    wait_for(
        browser,
        lambda: (
            by_css(browser, f"{card} progress").get_attribute("data-progress") == "100"
            and by_css(browser, card).get_attribute("data-status") == "completed"
        ),
        "the bar did not reach 100%",
        timeout=60,
    )
    text = by_css(browser, card).text
    assert "100%" in text and "41 of 41 processed" in text and "40 succeeded" in text and "1 failed" in text, text
    assert "first errors (1)" in text  # the row of two numbers, where the model takes four
    assert by_css(browser, f"{card} a.download").get_attribute("href").startswith("http")
    shot(browser, "batch")


@pytest.fixture
def two_versions(stack: dict[str, str]) -> Iterator[str]:
    name = f"console-{uuid.uuid4().hex[:8]}"
    ids = []
    try:
        for version, k in (("1", 2.0), ("2", 3.0)):
            status, body, _ = api(
                stack,
                "POST",
                "/v1/models",
                {"name": name, "version": version, "framework": "onnx", "format": "onnx", "upload": True},
            )
            assert status == 201, body
            ids.append(body["id"])
            _upload(stack, body["id"], linear_onnx(k))
        for model_id in ids:
            deadline = time.monotonic() + 60
            while api(stack, "GET", f"/v1/models/{model_id}")[1]["state"] != "ready":
                assert time.monotonic() < deadline, f"{name} did not load"
                time.sleep(0.2)
        yield name
    finally:
        api(stack, "DELETE", f"/v1/models/by-name/{name}/aliases/production")
        for model_id in ids:
            api(stack, "DELETE", f"/v1/models/{model_id}")


def _upload(stack: dict[str, str], model_id: str, data: bytes) -> None:
    import urllib.request

    req = urllib.request.Request(
        f"{stack['gateway']}/v1/models/{model_id}/artifact",
        data=data,
        method="PUT",
        headers={"Authorization": f"Bearer {stack['key']}", "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200


def test_a_canary_split_set_from_the_page_shows_in_models(
    browser: Any, stack: dict[str, str], two_versions: str
) -> None:
    go(browser, "models")
    card = f'article[data-model="{two_versions}"]'
    wait_for(browser, lambda: all_css(browser, f"{card} form.split"), "no split form for two ready versions")
    for version, weight in (("1", "90"), ("2", "10")):
        field = by_css(browser, f'{card} input[data-version="{version}"]')
        field.clear()
        field.send_keys(weight)
    by_css(browser, f"{card} form.split button[type=submit]").click()
    shown = wait_for(
        browser, lambda: by_css(browser, f'{card} [data-alias="production"] .split-text').text, "the split is not shown"
    )
    assert shown == "→ 1=90%, 2=10%", shown
    assert api(stack, "GET", f"/v1/models/by-name/{two_versions}/aliases/production")[1]["versions"] == {
        "1": 90,
        "2": 10,
    }
    browser.execute_script("arguments[0].scrollIntoView()", by_css(browser, card))
    shot(browser, "models-split")
    go(browser, "models")
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "models")


def test_hostile_values_are_shown_as_text(browser: Any, stack: dict[str, str]) -> None:
    status, body, _ = api(
        stack,
        "POST",
        "/v1/models",
        {"name": XSS, "version": "1", "framework": "onnx", "format": "onnx", "triton_model": "iris_classifier"},
    )
    assert status == 400 and body["field"] == "name", "the registry refuses markup in names"
    name = f"console-xss-{uuid.uuid4().hex[:6]}"
    status, model, _ = api(
        stack,
        "POST",
        "/v1/models",
        {
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "triton_model": "iris_classifier",
            "description": XSS,
        },
    )
    assert status == 201, model
    try:
        go(browser, "models")
        card = f'article[data-model="{name}"]'
        wait_for(browser, lambda: XSS in by_css(browser, card).text, "the description is not shown as text")
        assert not all_css(browser, f"{card} img") and not all_css(browser, "img[src=x]")
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 (the access is the check)
    finally:
        api(stack, "DELETE", f"/v1/models/{model['id']}")


def test_a_stopped_backend_shows_an_open_circuit_and_its_job_is_cancelled(browser: Any, stack: dict[str, str]) -> None:
    from shared.localstack.stack import UNREACHABLE_BACKEND

    name = f"console-down-{uuid.uuid4().hex[:6]}"
    status, model, _ = api(
        stack,
        "POST",
        "/v1/models",
        {
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "triton_model": "iris_classifier",
            "backend_url": UNREACHABLE_BACKEND,
        },
    )
    assert status == 201 and model.get("warnings"), model  # registered; nothing answers there
    try:
        codes = [
            api(stack, "POST", "/v1/infer", {"model": name, "input": {"data": [[1, 2, 3, 4]]}})[1]["code"]
            for _ in range(8)
        ]
        assert codes[-1] == "circuit_open", codes
        go(browser, "backends")
        row = f'tr[data-backend="{UNREACHABLE_BACKEND}"]'
        wait_for(browser, lambda: by_css(browser, f"{row} .circuit").text.startswith("open"), "the circuit is not open")
        healthy = 'tr[data-backend="127.0.0.1:8001"]'
        assert by_css(browser, f"{healthy} .circuit").text.startswith("closed")
        for i in range(31):  # traffic on the live backend: its rate and median appear with the next poll
            if i == 30:
                time.sleep(1.1)  # a serving process flushes its tallies with the first request after a second
            assert (
                api(
                    stack, "POST", "/v1/infer", {"model": "iris_classifier", "input": {"data": [[5.1, 3.5, 1.4, 0.2]]}}
                )[0]
                == 200
            )
        wait_for(
            browser,
            lambda: (
                by_css(browser, f"{healthy} td:nth-child(4)").text.endswith(" ms")
                and float(by_css(browser, f"{healthy} td:nth-child(5)").text) >= 0.2
            ),
            "no rate or p50 shown",
            timeout=15,
        )
        wait_for(browser, lambda: "not ready" in by_css(browser, row).text, "the failed probe is not shown")
        shot(browser, "backends")
        shot(browser, "backends-phone", width=390)
        browser.set_window_size(1280, 900)
        _cancel_from_the_page(browser, stack, name)
    finally:
        api(stack, "DELETE", f"/v1/models/{model['id']}")
        _close_circuit(UNREACHABLE_BACKEND)


def _cancel_from_the_page(browser: Any, stack: dict[str, str], model: str) -> None:
    """A job whose backend is down keeps being retried (processing): cancel it with its button."""
    status, job, _ = api(stack, "POST", "/v1/batch", {"model": model, "inputs": [{"data": [1, 2, 3, 4]}] * 3})
    assert status == 202, job
    go(browser, "batch")
    card = f'article[data-job="{job["job_id"]}"]'
    wait_for(browser, lambda: by_css(browser, f"{card} button.cancel"), "no cancel button on an active job").click()
    wait_for(
        browser,
        lambda: by_css(browser, card).get_attribute("data-status") == "cancelled",
        "the job did not show as cancelled",
    )
    assert not all_css(browser, f"{card} button.cancel")
    assert api(stack, "GET", f"/v1/batch/{job['job_id']}")[1]["status"] == "cancelled"


def _close_circuit(url: str) -> None:
    """Restore: the next run (or anyone) finds this backend's shared circuit closed again."""
    from shared.services import Services
    from shared.settings import Settings

    services = Services(Settings.from_env())  # the stack's own settings, as `kinfer up` read them
    try:
        services.breakers.reset(url)
    finally:
        services.close()


def test_phone_width_and_keyboard(browser: Any) -> None:
    go(browser, "models")
    browser.set_window_size(390, 860)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400, f"the page is {width}px wide at a phone's 390px"
    shot(browser, "models-phone", width=390)
    browser.set_window_size(1280, 900)
    by_css(browser, "body").click()
    browser.execute_script("document.activeElement.blur()")
    from selenium.webdriver.common.keys import Keys

    focused = []
    for _ in range(4):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        focused.append(
            browser.execute_script(
                "const e = document.activeElement; return e.tagName + ':' + (e.dataset.view || e.id || e.textContent)"
            )
        )
    assert any(f.startswith("BUTTON:") for f in focused), focused


def test_sign_out_forgets_the_key(browser: Any) -> None:
    by_css(browser, "#sign-out").click()
    wait_for(browser, lambda: by_css(browser, "#signin").is_displayed(), "sign-in not shown after sign out")
    assert browser.execute_script("return sessionStorage.getItem('kinfer.apiKey')") is None


def test_a_key_without_admin_scope_gets_no_admin_buttons(browser: Any, stack: dict[str, str]) -> None:
    status, key, _ = api(
        stack, "POST", "/v1/keys", {"name": f"console-{uuid.uuid4().hex[:6]}", "scopes": ["infer", "batch"]}
    )
    assert status == 201, key
    try:
        sign_in(browser, key["key"])
        wait_for(browser, lambda: " version(s) of " in by_css(browser, "#models-note").text, "models did not load")
        assert "no admin scope" in by_css(browser, "#models-note").text
        assert not all_css(browser, "button.promote") and not all_css(browser, "form.split")
        assert by_css(browser, "#who-name").text.endswith("(batch, infer)")
        by_css(browser, "#sign-out").click()
    finally:
        api(stack, "DELETE", f"/v1/keys/{key['id']}")
