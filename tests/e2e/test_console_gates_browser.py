"""The console's Gates panel in a real browser (Debian chromium) on the local stack: an alias's shadow versions
show on its model card, and the panel shows the alias's rollout and pauses it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_console_browser import all_css, api, browser, by_css, go, sign_in, two_versions, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["browser", "two_versions"]  # fixtures shared with the console's own browser tests


def test_the_gates_panel_shows_shadow_and_rollout_and_pauses_it(
    browser: Any, stack: dict[str, str], two_versions: str
) -> None:
    name, base = two_versions, f"/v1/models/by-name/{two_versions}/aliases/production"
    assert api(stack, "PUT", base, {"version": "1"})[0] == 200
    assert api(stack, "PUT", f"{base}/shadow", {"shadow": {"2": 25}})[0] == 200
    policy = {"candidate": "2", "min_requests": 100000, "min_step_s": 3600}
    started = api(stack, "POST", f"{base}/rollout", policy)
    assert started[0] == 200, started[1]
    try:
        sign_in(browser, stack["key"])
        go(browser, "models")
        card = f'article[data-model="{name}"] [data-alias="production"]'
        shadow = wait_for(browser, lambda: by_css(browser, f"{card} .shadow-text").text, "no shadow shown")
        assert shadow == "shadow 2=25%"
        by_css(browser, f"{card} button.gates").click()
        panel = f'article[data-model="{name}"] .gates-panel'
        state = wait_for(browser, lambda: by_css(browser, f"{panel} .rollout-state").text, "no rollout shown")
        assert state.startswith("rollout to 2: running at 10 %"), state
        assert "production: shadow 2=25%" in by_css(browser, panel).text
        by_css(browser, f"{panel} button.rollout-pause").click()
        wait_for(
            browser,
            lambda: "paused" in by_css(browser, f"{panel} .rollout-state").text,
            "the rollout is not shown paused",
        )
        assert api(stack, "GET", f"{base}/rollout")[1]["state"] == "paused"
        assert all_css(browser, f"{panel} button.rollout-resume")
    finally:
        api(stack, "POST", f"{base}/rollout/abort")


def test_the_audit_view_lists_an_alias_move_with_before_and_after_and_filters_by_model(
    browser: Any, stack: dict[str, str], two_versions: str
) -> None:
    name, base = two_versions, f"/v1/models/by-name/{two_versions}/aliases/production"
    assert api(stack, "PUT", base, {"version": "1"})[0] == 200
    assert api(stack, "PUT", base, {"version": "2"})[0] == 200
    signed_out = all_css(browser, "#key")
    if signed_out and signed_out[0].is_displayed():  # the browser is shared: an earlier test may have signed in
        sign_in(browser, stack["key"])
    go(browser, "audit")
    by_css(browser, "#audit-model").send_keys(name)
    by_css(browser, "#audit-filter button[type=submit]").click()
    rows = wait_for(
        browser,
        lambda: [r.text for r in all_css(browser, "#audit-table tbody tr") if "alias.move" in r.text],
        "the alias moves are not listed",
    )
    assert all(name in row for row in rows), rows  # the filter kept only this model's entries
    newest = rows[0]  # newest first: the move from 1 to 2, with what the alias was and became
    assert '"versions":{"1":100}' in newest and '"versions":{"2":100}' in newest, newest
    assert newest.index('"versions":{"1":100}') < newest.index('"versions":{"2":100}'), "before, then after"
    note = by_css(browser, "#audit-note").text
    assert note.endswith("match."), note
    assert "#/audit" in browser.current_url and f"model={name}" in browser.current_url
