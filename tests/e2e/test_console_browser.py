"""The console in a real headless browser (Debian's chromium through chromedriver, driven by Selenium)
against the running local stack: sign in, the demo models, a prediction from the generated form, a batch
file whose bar reaches 100%, a canary split set from the page, an open circuit, text-only rendering of
hostile values, a wrong key refused; with 100 models, a page load's API requests (counted with the
browser's performance entries), search, paging and deep links that survive a reload, failed requests shown
with their request id, and a waking backend shown as waking with its estimate.

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
    wait_for(browser, lambda: " version(s) of " in by_css(browser, "#models-note").text, "models did not load")
    for name in ("iris_classifier", "vector_scorer"):  # found with the search box (older models page away)
        search = by_css(browser, "#models-q")
        search.clear()
        search.send_keys(name)
        by_css(browser, "#models-filter button[type=submit]").click()

        def found(n: str = name) -> bool:  # one render: the list after the search, the card's name and state
            shown = cards(browser)
            card = by_css(browser, f'article[data-model="{n}"]')
            return (
                browser.current_url.endswith(f"?q={n}")
                and n in shown
                and all(n in m for m in shown)
                and card.find_element("css selector", ".model-name").text == n
                and "ready" in card.text
            )

        wait_for(browser, found, f"the search did not show {name} ready")
    assert by_css(browser, "#who-name").text.startswith("demo (")
    assert browser.execute_script("return sessionStorage.getItem('kinfer.apiKey')") == stack["key"]
    assert stack["key"] not in browser.current_url and browser.current_url.endswith("#/models?q=vector_scorer")
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


@pytest.fixture
def two_signatures(stack: dict[str, str]) -> Iterator[str]:
    """Version 1 takes input ``x``, version 2 input ``z`` (another config: its own Triton model); production -> 1."""
    name = f"console-sig-{uuid.uuid4().hex[:8]}"
    ids = []
    try:
        for version, tensor in (("1", "x"), ("2", "z")):
            body = {"name": name, "version": version, "framework": "onnx", "format": "onnx", "upload": True}
            status, model, _ = api(stack, "POST", "/v1/models", body)
            assert status == 201, model
            ids.append(model["id"])
            _upload(stack, model["id"], linear_onnx(2.0, name=tensor))
        for model_id in ids:
            deadline = time.monotonic() + 60
            while api(stack, "GET", f"/v1/models/{model_id}")[1]["state"] != "ready":
                assert time.monotonic() < deadline, f"{name} did not load"
                time.sleep(0.2)
        status, moved, _ = api(stack, "PUT", f"/v1/models/by-name/{name}/aliases/production", {"version": "1"})
        assert status == 200, moved
        yield name
    finally:
        api(stack, "DELETE", f"/v1/models/by-name/{name}/aliases/production")
        for model_id in ids:
            api(stack, "DELETE", f"/v1/models/{model_id}")


def test_a_promote_to_another_signature_is_confirmed_from_the_page_and_triton_names_its_model(
    browser: Any, stack: dict[str, str], two_signatures: str
) -> None:
    name = two_signatures
    open_at(browser, stack, f"#/models/{name}")
    card = f'article[data-model="{name}"]'
    wait_for(browser, lambda: all_css(browser, f'{card} tr[data-version="2"] button.promote'), "no promote button")
    triton = {v: by_css(browser, f'{card} tr[data-version="{v}"] td.triton').text for v in ("1", "2")}
    assert triton == {"1": "1", "2": f"{name}.v2:1"}, triton  # version 2 lives in a Triton model of its own
    by_css(browser, f'{card} tr[data-version="2"] button.promote').click()
    message = wait_for(browser, lambda: by_css(browser, f"{card} .model-message.error"), "the 409 is not shown")
    wait_for(browser, lambda: "signature_mismatch" in message.text, "the refusal does not say why")
    assert api(stack, "GET", f"/v1/models/by-name/{name}/aliases/production")[1]["versions"] == {"1": 100}
    by_css(browser, f"{card} button.allow-signature-change").click()
    shown = wait_for(
        browser, lambda: by_css(browser, f'{card} [data-alias="production"] .split-text').text == "→ 2", "not moved"
    )
    assert shown and api(stack, "GET", f"/v1/models/by-name/{name}/aliases/production")[1]["versions"] == {"2": 100}


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


# -- many models: a page load's requests, search, paging, deep links, errors, a waking backend --------------
MANY = 100


@pytest.fixture(scope="module")
def many_models(stack: dict[str, str]) -> Iterator[str]:
    """MANY model names sharing a random prefix (registered against the demo Triton model: no upload)."""
    prefix = f"console-many-{uuid.uuid4().hex[:6]}"
    ids = []
    try:
        for i in range(MANY):
            body = {"name": f"{prefix}-{i:03d}", "version": "1", "framework": "onnx", "format": "onnx"}
            status, model, _ = api(stack, "POST", "/v1/models", {**body, "triton_model": "iris_classifier"})
            assert status == 201, model
            ids.append(model["id"])
        yield prefix
    finally:
        for model_id in ids:
            api(stack, "DELETE", f"/v1/models/{model_id}")


def open_at(driver: Any, stack: dict[str, str], hash_route: str) -> None:
    """A reload of the console at ``hash_route``, signed in with the demo key (kept in the tab's session)."""
    driver.execute_script("sessionStorage.setItem('kinfer.apiKey', arguments[0])", stack["key"])
    driver.execute_script("window.location.hash = arguments[0]", hash_route)
    driver.refresh()


def api_requests(driver: Any) -> list[str]:
    """The API requests the page sent since it was loaded (the browser's resource timing entries)."""
    names: list[str] = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => new URL(n).pathname.startsWith('/v1/') || new URL(n).pathname.startsWith('/v2/'))"
    )
    return names


def cards(driver: Any) -> list[str]:
    return [c.get_attribute("data-model") for c in all_css(driver, "#models-list article.model")]


def models_loaded(driver: Any, says: str) -> None:
    wait_for(driver, lambda: says in by_css(driver, "#models-note").text, f"the models note never said {says!r}")


def test_a_page_load_with_100_models_sends_at_most_5_api_requests(
    browser: Any, stack: dict[str, str], many_models: str
) -> None:
    assert api(stack, "GET", "/v1/models?limit=1")[1]["total"] >= MANY
    open_at(browser, stack, "#/models")
    models_loaded(browser, " version(s) of ")
    sent = api_requests(browser)
    assert 1 <= len(sent) <= 5, sent
    assert not [n for n in sent if "/aliases" in n], "aliases come with the list, not one request per model"
    assert len(cards(browser)) <= 20 and "page 1 of " in by_css(browser, "#models-pager").text
    shot(browser, "models-many")


def test_search_paging_and_deep_links_work_after_a_reload(
    browser: Any, stack: dict[str, str], many_models: str
) -> None:
    open_at(browser, stack, f"#/models?q={many_models.upper()}")
    models_loaded(browser, f"of {MANY} version(s)")
    first = cards(browser)
    assert len(first) == 20 and all(n.startswith(many_models) for n in first), first
    by_css(browser, "#models-pager a.next").click()
    wait_for(browser, lambda: "page=2" in browser.current_url, "the next page has no address")
    wait_for(browser, lambda: "page 2 of 5" in by_css(browser, "#models-pager").text, "page 2 not shown")
    models_loaded(browser, f"21–40 of {MANY}")
    second = cards(browser)
    assert len(second) == 20 and not set(first) & set(second)
    browser.refresh()
    models_loaded(browser, f"21–40 of {MANY}")
    assert cards(browser) == second and by_css(browser, "#models-q").get_attribute("value") == many_models.upper()
    assert len(api_requests(browser)) <= 5
    from selenium.webdriver.support.ui import Select

    Select(by_css(browser, "#models-framework")).select_by_value("pytorch")  # a filter: back to page 1
    wait_for(browser, lambda: "No model matches" in by_css(browser, "#models-list").text, "the filter did not apply")
    assert "framework=pytorch" in browser.current_url and "page=" not in browser.current_url
    name = f"{many_models}-007"
    open_at(browser, stack, f"#/models/{name}")
    wait_for(browser, lambda: cards(browser) == [name], "the deep link to a model did not open it")
    browser.refresh()
    wait_for(browser, lambda: cards(browser) == [name], "a reload lost the model's view")
    assert by_css(browser, "#models-back").is_displayed() and not by_css(browser, "#models-filter").is_displayed()


def test_a_page_past_the_last_shows_no_range_and_links_to_the_last_page(
    browser: Any, stack: dict[str, str], many_models: str
) -> None:
    open_at(browser, stack, f"#/models?q={many_models}&page=99")
    models_loaded(browser, f"Page 99 is past the last page (5); there are {MANY} version(s).")
    assert "–" not in by_css(browser, "#models-note").text and cards(browser) == []
    link = by_css(browser, "#models-list .past-end a")
    assert link.text == "go to page 5"
    link.click()
    models_loaded(browser, f"81–100 of {MANY} version(s)")
    assert "page=5" in browser.current_url and len(cards(browser)) == 20


def test_batch_filters_and_a_job_deep_link_work_after_a_reload(browser: Any, stack: dict[str, str]) -> None:
    status, job, _ = api(stack, "POST", "/v1/batch", {"model": "iris_classifier", "inputs": [{"data": [1, 2, 3, 4]}]})
    assert status == 202, job
    card = f'article[data-job="{job["job_id"]}"]'
    open_at(browser, stack, f"#/batch/{job['job_id']}")
    wait_for(browser, lambda: by_css(browser, card).get_attribute("data-status") == "completed", "the job is not shown")
    browser.refresh()
    wait_for(browser, lambda: len(all_css(browser, "#batch-list article.job")) == 1 and by_css(browser, card), "lost")
    open_at(browser, stack, "#/batch?q=IRIS_class&status=completed")
    wait_for(browser, lambda: all_css(browser, card), "the finished job is not in the filtered list")
    shown = all_css(browser, "#batch-list article.job")
    assert len(shown) <= 10 and all(c.get_attribute("data-status") == "completed" for c in shown)
    assert "iris_classifier" in by_css(browser, card).text and by_css(browser, "#batch-q").get_attribute("value")
    open_at(browser, stack, "#/batch?q=no-such-model-anywhere")
    wait_for(browser, lambda: "No job matches" in by_css(browser, "#batch-list").text, "the model filter did not apply")


@pytest.mark.parametrize(
    ("hash_route", "status", "code"),
    [("#/batch/00000000-0000-4000-8000-000000000000", "404", "not_found"), ("#/models?framework=nope", "400", None)],
)
def test_a_failed_request_is_shown_with_its_status_code_message_and_request_id(
    browser: Any, stack: dict[str, str], hash_route: str, status: str, code: str | None
) -> None:
    open_at(browser, stack, hash_route)
    error = wait_for(browser, lambda: by_css(browser, ".view:not([hidden]) .api-error"), "no error shown")
    text = error.text
    assert text.startswith(f"{status} ") and (code is None or f" {code}: " in text), text
    request_id = error.get_attribute("data-request-id")
    assert len(request_id) >= 16 and f"request id: {request_id}" in text, text
    if status == "400":
        assert "field: framework" in text and "framework must be one of" in text, text


def test_a_waking_backend_is_shown_as_waking_with_its_estimate(browser: Any, stack: dict[str, str]) -> None:
    """The local activator's record of a Triton that scales to zero and is waking (written as the activator
    writes it, again at each check: the stack's own probes may replace it)."""
    import json
    from datetime import UTC, datetime, timedelta

    from shared.backends.balancer import probe_key
    from shared.localstack.activator import ActivatorStatus, probe_record
    from shared.services import Services
    from shared.settings import Settings

    backend = "127.0.0.1:8001"
    since = (datetime.now(UTC) - timedelta(seconds=4)).isoformat()
    status: ActivatorStatus = {
        "state": "waking",
        "since": since,
        "connections": 0,
        "held": 3,
        "wakes": 1,
        "last_wake_s": 30.0,
        "timeouts": 0,
        "idle_s": 60,
        "hold_s": 120,
        "error": "",
        "pids": {"triton": None, "agent": None},
    }
    services = Services(Settings.from_env())
    client = services.cache.client
    before = client.get(probe_key(backend))
    row = f'tr[data-backend="{backend}"]'

    def waking() -> bool:
        client.set(probe_key(backend), json.dumps(probe_record(backend, status)), ex=60)
        return by_css(browser, row).get_attribute("data-state") == "waking"

    try:
        open_at(browser, stack, "#/backends")
        wait_for(browser, waking, "the waking backend is not shown as waking")
        text = by_css(browser, f"{row} .probe").text
        assert "waking" in text and "not ready" not in text, text
        assert "the last wake took 30 s" in text and "to go" in text and "held" in text, text
        shot(browser, "backends-waking")
    finally:
        if before is None:
            client.delete(probe_key(backend))
        else:
            client.set(probe_key(backend), before, ex=3600)
        services.close()


def test_a_capture_rule_set_from_the_page_is_listed_and_stopped(browser: Any, stack: dict[str, str]) -> None:
    name, alias = "iris_classifier", f"cap{uuid.uuid4().hex[:6]}"  # the demo model; an alias of this test's own
    made = api(stack, "PUT", f"/v1/models/by-name/{name}/aliases/{alias}", {"version": "1"})
    assert made[0] == 200, made[1]  # a rule names an alias the model has (else 404)
    try:
        _capture_rule_from_the_page(browser, stack, name, alias)
    finally:
        api(stack, "DELETE", f"/v1/models/by-name/{name}/aliases/{alias}")


def _capture_rule_from_the_page(browser: Any, stack: dict[str, str], name: str, alias: str) -> None:
    from selenium.webdriver.common.by import By

    go(browser, "capture")
    wait_for(browser, lambda: by_css(browser, "#capture-form").is_displayed(), "an admin key gets no capture form")
    fields = (
        ("#capture-model", name),
        ("#capture-alias", alias),
        ("#capture-percent", "25"),
        ("#capture-redact", "ssn, features"),
    )
    for field, value in fields:
        box = by_css(browser, field)
        box.clear()
        box.send_keys(value)
    by_css(browser, "#capture-form button[type=submit]").click()

    def rows() -> list[Any]:
        return [r for r in all_css(browser, "#capture-table tbody tr") if f"{name} {alias} " in r.text]

    row = wait_for(browser, rows, "the new capture rule is not listed")[0]
    assert "25 %" in row.text and "features, ssn" in row.text, row.text
    assert api(stack, "GET", f"/v1/models/by-name/{name}/capture?alias={alias}")[1]["redact"] == ["features", "ssn"]
    shot(browser, "capture")
    row.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(browser, lambda: not rows(), "the stopped capture rule is still listed")
    assert api(stack, "GET", f"/v1/models/by-name/{name}/capture?alias={alias}")[0] == 404
