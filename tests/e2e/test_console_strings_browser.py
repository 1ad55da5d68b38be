"""The console's Try it form with a string model (``text_sentiment``, a BYTES input) in a real browser (Debian
chromium) on the local stack: the form says the tensor takes strings, plain text is one string, a JSON list
one string per row, and a number is refused with the API's 400."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_console_browser import browser, by_css, go, shot, sign_in, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the fixture shared with the console's own browser tests


def _run(driver: Any, text: str) -> None:
    area = by_css(driver, "#try-inputs textarea")
    area.clear()
    area.send_keys(text)
    driver.execute_script("document.getElementById('try-result').hidden = true")
    by_css(driver, "#try-run").click()


def test_try_it_takes_plain_text_and_json_strings(browser: Any, stack: dict[str, str]) -> None:
    from selenium.webdriver.support.ui import Select

    sign_in(browser, stack["key"])
    wait_for(browser, lambda: " version(s) of " in by_css(browser, "#models-note").text, "models did not load")
    go(browser, "try")
    wait_for(
        browser,
        lambda: "text_sentiment" in [o.get_attribute("value") for o in Select(by_css(browser, "#try-model")).options],
        "text_sentiment is not among the models to try",
    )
    Select(by_css(browser, "#try-model")).select_by_value("text_sentiment")
    by_css(browser, "#try-pick button[type=submit]").click()
    area = wait_for(browser, lambda: by_css(browser, "#try-inputs textarea"), "no input form from the metadata")
    assert area.get_attribute("data-tensor") == "text" and area.get_attribute("value") == '[["some text"]]'
    note = by_css(browser, "#try-inputs .note").text
    assert note.startswith("BYTES, shape [-1, 1]") and "plain text: one string" in note, note

    def answer() -> str:
        shown = by_css(browser, "#try-result").is_displayed()
        return str(by_css(browser, "#try-result .prediction").text) if shown else ""

    _run(browser, "what a wonderful, moving story")  # not JSON: one string, as typed
    assert wait_for(browser, answer, "no prediction for plain text") == '"positive"'
    _run(browser, '["a great film", "dull and awful"]')
    assert wait_for(browser, answer, "no prediction for a list of strings") == '["positive","negative"]'
    shot(browser, "try-it-strings")
    _run(browser, "[42]")
    error = wait_for(browser, lambda: by_css(browser, "#try-result .api-error").text, "no error shown")
    assert error.startswith("400 ") and "input.text[0] is a number, not a string" in error, error
