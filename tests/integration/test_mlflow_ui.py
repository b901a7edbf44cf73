"""The operator's promotion and rollback through the MLflow UI itself, in a real browser (Playwright driving
Debian's Chromium), against one `driftloop up` stack: the workers serve what the UI set within 5 s, the
control plane audits the move, and `driftloop up` prints it in its terminal.

On a failure, screenshots of the pages are saved in the test's tmp dir and named in the message.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from driftloop.models import registry
from driftloop.models.bootstrap import placeholder_spec
from driftloop.models.flavors import new_model
from driftloop.signing import load_key
from tests.support.models import TRAIN, TRAIN_Y
from tests.support.stack import wait_for_line
from tests.support.trust import NAME, Stack, champion_served, eventually, metric_value

CHROMIUM = Path("/usr/bin/chromium")
# No network, no updates, no GPU: a browser that only renders the page it is given.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVED_WITHIN = 5.0


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack serving the placeholder v1 as champion, with a signed v2 as the challenger on a canary."""
    stack = Stack(tmp_path_factory.mktemp("mlflow-ui"))
    try:
        river = placeholder_spec(stack_spec())
        model = new_model(river)
        model.learn(TRAIN[:500], TRAIN_Y[:500])
        assert (
            registry.register(
                model, river, tracking_uri=stack.url, reference_rows=TRAIN[:200], key=load_key(stack.key_file)
            ).version
            == 2
        )
        registry.set_alias(NAME, "challenger", 2, tracking_uri=stack.url)  # what a retraining does
        eventually(
            lambda: metric_value(stack.metrics, "driftloop_model_version", f'{{model="{NAME}",variant="canary"}}') == 2,
            60,
            "the worker serving canary v2",
        )
        yield stack
    finally:
        stack.stop()


def stack_spec():
    from driftloop.settings import DEMO_SPEC
    from driftloop.spec import load_spec

    return load_spec(DEMO_SPEC)


@contextmanager
def screenshots_on_failure(page, directory: Path, name: str):
    try:
        yield
    except Exception as failure:
        shot = directory / f"{name}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            where = f"; screenshot of the page: {shot}"
        except Exception as exc:  # the browser itself may be what failed
            where = f"; no screenshot ({exc})"
        raise AssertionError(f"{name}: {failure}{where}") from failure


def set_champion_in_the_ui(browser, url: str, version: int, directory: Path, *, drop: str | None = None) -> float:
    """On the version's page: edit its aliases, add `champion` (and remove the alias `drop`), Save; returns
    time.monotonic() of the save, once the page shows the saved aliases."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    with screenshots_on_failure(page, directory, f"v{version}-aliases"):
        page.goto(f"{url}/#/models/{NAME}/versions/{version}")
        # the pencil beside the version's aliases, or "Add" when it has none
        aliases = page.locator("[data-testid=descriptions-item]", has_text="Aliases")
        aliases.get_by_role("button").first.click(timeout=30_000)
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("combobox").fill("champion")
        dialog.get_by_role("combobox").press("Enter")
        if drop is not None:
            dialog.locator(f"[title={drop}] button").click()
        dialog.get_by_role("button", name="Save aliases").click()
        dialog.wait_for(state="hidden")
        saved = time.monotonic()
        page.locator("[title=champion]").wait_for()  # the version page now shows the alias
        if drop is not None:
            assert page.locator(f"[title={drop}]").count() == 0, f"the page still shows @{drop}"
    page.close()
    return saved


def served_everywhere(stack: Stack, version: int, saved: float) -> None:
    urls = json.loads((stack.tmp / "data" / "stack.json").read_text())["metrics_urls"]
    eventually(
        lambda: all(champion_served(url) == version for url in urls),
        max(0.05, SERVED_WITHIN - (time.monotonic() - saved)),
        f"every worker ({', '.join(urls)}) serving v{version} as champion within {SERVED_WITHIN:g} s of the save",
    )


def audited(stack: Stack, version: int) -> dict:
    """The alias_moved record of the move that made `version` the champion."""

    def champion_moved(record: dict) -> bool:
        moved = record.get("details") or {}
        return (
            record["action"] == "alias_moved"
            and record["version"] == version
            and moved["to"].get("champion") == version != moved["from"].get("champion")
        )

    return eventually(
        lambda: next(filter(champion_moved, stack.audit()), None),
        30,
        f"an alias_moved record naming v{version} as the new champion",
    )


def test_promotion_and_rollback_in_the_mlflow_ui_reach_the_workers_and_the_audit_trail(stack, browser, tmp_path):
    saved = set_champion_in_the_ui(browser, stack.url, 2, tmp_path, drop="challenger")
    served_everywhere(stack, 2, saved)
    assert registry.aliases(NAME, tracking_uri=stack.url) == {"champion": 2}
    promoted = audited(stack, 2)
    assert promoted["actor"] == "operator" and "MLflow UI" in promoted["reason"]
    assert "champion v1 -> v2" in promoted["reason"]
    wait_for_line(stack.process, "decision: operator: alias_moved v2", timeout=30)  # in up's terminal too

    saved = set_champion_in_the_ui(browser, stack.url, 1, tmp_path)
    served_everywhere(stack, 1, saved)
    rolled_back = audited(stack, 1)
    assert "champion v2 -> v1" in rolled_back["reason"]
    wait_for_line(stack.process, "decision: operator: alias_moved v1", timeout=30)
