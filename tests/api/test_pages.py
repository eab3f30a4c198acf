"""The playground (`/`) and status (`/status`) pages in a real browser: Debian's Chromium,
driven by Playwright, against the in-process app (real app, edge, service, router and
tokenizers; model scores from `FakeModels`) served by uvicorn on loopback, once with API
keys on and once with them off. One browser for the module. Screenshots go to the test's
temporary folder, or to `$RERANK_PAGE_SCREENSHOTS` when set (how `docs/` got its PNGs).

Without /usr/bin/chromium the browser tests skip, except under CI (`CI` set), where
`.ci/run` installs it and a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from serve_app import errors
from serve_app.api.app import PAGES, create_app
from serve_app.api.assembly import assemble
from serve_app.config import AppConfig
from serve_app.service.auth import hash_key
from serve_app.service.usage import LocalLedger
from tests.api.test_app import FakeModels
from tests.conftest import checkpoint_path, usage_db_path, uvicorn_on_loopback

CHROMIUM = Path("/usr/bin/chromium")
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
MODELS = [TINY, L12]
KEY = "rr-pages-key"
MAX_DOCUMENTS = 5
DOCUMENTS = [
    "a short one",
    "the longest document of all of them, by quite a margin indeed",
    "medium length document here",
    "tiny",
    "another document of some middling length",
]
WAIT_MS = 15_000  # Playwright's deadline for a condition it polls for


class Served:
    def __init__(self, url: str, models: FakeModels, keyed: bool):
        self.url = url
        self.models = models
        self.keyed = keyed

    def api(self, method: str, path: str, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if self.keyed and key else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


@contextmanager
def serve(checkpoint_root: Path, keyed: bool) -> Iterator[Served]:
    config = AppConfig.model_validate(
        {
            "models": [{"name": m, "source": checkpoint_path(checkpoint_root, m)} for m in MODELS],
            "auth": {"keys": [{"id": "pages", "sha256": hash_key(KEY)}]}
            if keyed
            else {"enabled": False},
            "limits": {"max_documents_per_request": MAX_DOCUMENTS},
            "chunking": {"long_documents": "chunk"},  # as the shipped configs
            "usage": {"sqlite_path": usage_db_path(checkpoint_root)},
        }
    )
    models = FakeModels(config.enabled_models)
    parts = assemble(config, models, LocalLedger(config.usage), environ={})
    with uvicorn_on_loopback(create_app(parts.service, parts.edge)) as url:
        yield Served(url, models, keyed)


@pytest.fixture(scope="module")
def keyed(checkpoint_root) -> Iterator[Served]:
    with serve(checkpoint_root, keyed=True) as served:
        yield served


@pytest.fixture(scope="module")
def keyless(checkpoint_root) -> Iterator[Served]:
    with serve(checkpoint_root, keyed=False) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("RERANK_PAGE_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def open_page(browser) -> Iterator[Callable]:
    """Opens a page in a fresh context (its own session storage). After the test: every
    request any page made went to the service it was opened on, and no page set a cookie."""
    opened = []

    def open_(served: Served, path: str, **context_options):
        context = browser.new_context(**context_options)
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(served.url + path)
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        opened.append((served, context, requests))
        return page

    yield open_
    for served, context, requests in opened:
        assert requests and all(url.startswith(served.url + "/") for url in requests), requests
        assert all(KEY not in url for url in requests)
        assert context.cookies() == []
        context.close()


def expect():
    from playwright.sync_api import expect

    return expect


def enter_key(page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Tab")  # `change`: stored, models reloaded


def fill_request(page, documents: list[str], model: str) -> None:
    page.get_by_label("Query").fill("which document is the longest")
    page.get_by_label("Documents").fill("\n".join(documents))
    page.get_by_label("Model").select_option(model)


def shown_error(page) -> str:
    expect()(page.locator("#error")).to_be_visible(timeout=WAIT_MS)
    return page.locator("#error").inner_text()


def click_rerank(page) -> int:
    """Clicks Rerank; the status of the /v1/rerank call it made."""
    with page.expect_response(lambda r: r.url.endswith("/v1/rerank"), timeout=WAIT_MS) as got:
        page.get_by_role("button", name="Rerank").click()
    return got.value.status


def api_error(response: httpx.Response) -> str:
    error = response.json()["error"]
    return f"{error['type']}: {error['message']}"


def test_pages_are_public_same_origin_files_and_traffic_needs_a_key(keyed):
    for path in PAGES:
        response = keyed.api("GET", path, key=None)
        assert response.status_code == 200, path
        assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert keyed.api("GET", "/v1/traffic", key=None).status_code == 401
    before = keyed.api("GET", "/v1/traffic").json()
    keyed.api("POST", "/v1/rerank", json={"query": "q", "documents": ["a", "bb"], "model": TINY})
    keyed.api("POST", "/v1/rerank", json={"query": "q", "documents": ["a"] * 6})
    after = keyed.api("GET", "/v1/traffic").json()
    assert after["requests"] == before["requests"] + 2
    assert after["errors_by_type"]["invalid_request"] == (
        before["errors_by_type"].get("invalid_request", 0) + 1
    )
    assert after["models"][TINY]["requests"] >= 1 and after["models"][TINY]["p99_ms"] > 0
    assert set(after["models"]) == set(MODELS)


def test_the_playground_ranks_as_the_api_does_with_a_key(open_page, keyed, screenshots):
    page = open_page(keyed, "/")
    expect()(page.get_by_label("API key")).to_be_visible()
    enter_key(page, KEY)
    model_options = page.get_by_label("Model").locator("option")
    expect()(model_options).to_have_count(2 + len(MODELS), timeout=WAIT_MS)
    assert model_options.evaluate_all("os => os.map(o => o.value)") == ["auto", "cascade", *MODELS]
    expect()(page.locator("#weights-warning")).to_contain_text("random weights")

    fill_request(page, DOCUMENTS, L12)
    page.get_by_role("button", name="Rerank").click()
    items = page.locator("#ranking > li")
    expect()(items).to_have_count(len(DOCUMENTS), timeout=WAIT_MS)

    same = keyed.api(
        "POST",
        "/v1/rerank",
        json={"query": "which document is the longest", "documents": DOCUMENTS, "model": L12},
    )
    expected = [(r["index"], DOCUMENTS[r["index"]]) for r in same.json()["results"]]
    shown = [
        (int(item.locator(".index").inner_text().lstrip("#")), item.locator(".text").inner_text())
        for item in items.all()
    ]
    assert shown == expected
    assert sorted(index for index, _ in shown) == list(range(len(DOCUMENTS)))  # each once
    assert all(re.fullmatch(r"-?\d+\.\d{4}", s) for s in items.locator(".score").all_inner_texts())
    assert page.locator("#served-by").inner_text() == same.headers["x-rerank-model"] == L12
    assert page.locator("#routing").inner_text().startswith("named")
    assert re.fullmatch(r"\d+\.\d ms", page.locator("#latency").inner_text())
    assert page.locator("#usage").inner_text().startswith(f"{len(DOCUMENTS)} documents, ")
    expect()(page.locator("#cost")).to_contain_text("for this key so far", timeout=WAIT_MS)
    assert page.evaluate("sessionStorage.getItem('rerank-api-key')") == KEY
    page.screenshot(path=screenshots / "playground.png", full_page=True)


def test_a_chunked_documents_best_passage_is_marked(open_page, keyless, screenshots):
    # Emoji (outside the BMP) before the passage: the span counts code points.
    long_doc = "🦦 " + " ".join(f"otters{i % 50} swim" for i in range(1500))
    documents = ["a short one", long_doc]
    page = open_page(keyless, "/")
    fill_request(page, documents, MODELS[0])
    page.get_by_role("button", name="Rerank").click()
    expect()(page.locator("#ranking > li")).to_have_count(2, timeout=WAIT_MS)
    answer = keyless.api(
        "POST",
        "/v1/rerank",
        json={"query": "which document is the longest", "documents": documents, "model": MODELS[0]},
    ).json()
    chunked = next(r for r in answer["results"] if r["index"] == 1)
    span = chunked["span"]
    item = page.locator("#ranking > li").filter(has_text="#1")
    assert item.locator("mark").inner_text() == long_doc[span["start"] : span["end"]]
    assert item.locator(".chunks").inner_text() == f"best of {chunked['chunks']} windows"
    assert item.locator(".text").inner_text() == long_doc  # the whole text, one part marked
    assert page.locator("#ranking mark").count() == 1  # the short document has none
    assert page.locator("#usage").inner_text().endswith(f"{1 + chunked['chunks']} windows")
    item.locator("mark").scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "playground-chunked.png")


def test_each_refusal_is_shown_as_the_apis_message(open_page, keyed, screenshots):
    page = open_page(keyed, "/")
    query = "which document is the longest"

    enter_key(page, "not-the-key")
    fill_request(page, DOCUMENTS, "auto")
    assert click_rerank(page) == 401
    bad_key = keyed.api(
        "POST", "/v1/rerank", key="not-the-key", json={"query": query, "documents": DOCUMENTS}
    )
    assert bad_key.status_code == 401
    expect()(page.locator("#error")).to_have_text(api_error(bad_key), timeout=WAIT_MS)

    enter_key(page, KEY)
    page.get_by_label("Model").select_option("auto")
    page.get_by_label("Accuracy floor (NDCG@10 on TREC DL19)").fill("99")
    assert click_rerank(page) == 400
    floor = keyed.api(
        "POST", "/v1/rerank", json={"query": query, "documents": DOCUMENTS, "min_ndcg": 99}
    )
    assert floor.status_code == 400
    expect()(page.locator("#error")).to_have_text(api_error(floor), timeout=WAIT_MS)
    page.screenshot(path=screenshots / "playground-error.png", full_page=True)

    too_many = [*DOCUMENTS, "one more"]
    fill_request(page, too_many, TINY)
    assert click_rerank(page) == 422
    many = keyed.api(
        "POST", "/v1/rerank", json={"query": query, "documents": too_many, "model": TINY}
    )
    assert many.status_code == 422
    expect()(page.locator("#error")).to_have_text(api_error(many), timeout=WAIT_MS)

    keyed.models.failure = errors.Overloaded("the model is full; retry", retry_after_s=1)
    try:
        fill_request(page, DOCUMENTS, TINY)
        assert click_rerank(page) == 503
        full = keyed.api(
            "POST", "/v1/rerank", json={"query": query, "documents": DOCUMENTS, "model": TINY}
        )
        assert full.status_code == 503
        expect()(page.locator("#error")).to_have_text(api_error(full), timeout=WAIT_MS)
    finally:
        keyed.models.failure = None
    expect()(page.locator("#result")).to_be_hidden()

    assert click_rerank(page) == 200  # the service kept serving; the page clears the error
    expect()(page.locator("#ranking > li")).to_have_count(len(DOCUMENTS), timeout=WAIT_MS)
    expect()(page.locator("#error")).to_be_hidden()


def test_without_keys_the_key_field_is_hidden_and_auto_reranks(open_page, keyless):
    page = open_page(keyless, "/")
    expect()(page.get_by_label("Model").locator("option")).to_have_count(
        2 + len(MODELS), timeout=WAIT_MS
    )
    expect()(page.locator("#key-field")).to_be_hidden()
    fill_request(page, DOCUMENTS, "auto")
    page.get_by_label("Latency budget (ms)").fill("100000")
    page.get_by_role("button", name="Rerank").click()
    expect()(page.locator("#ranking > li")).to_have_count(len(DOCUMENTS), timeout=WAIT_MS)
    assert page.locator("#routing").inner_text().startswith("budget")
    assert "budget met" in page.locator("#routing").inner_text()
    page.get_by_label("Model").select_option(TINY)
    expect()(page.get_by_label("Latency budget (ms)")).to_be_hidden()


def test_the_status_page_shows_every_model_and_refreshes_itself(open_page, keyed, screenshots):
    page = open_page(keyed, "/status")
    enter_key(page, KEY)
    for model in MODELS:
        card = page.locator(f"article.model[data-model='{model}']")
        expect()(card).to_contain_text("Replicas (running / target)1 / 1", timeout=WAIT_MS)
        expect()(card.locator(".warning")).to_contain_text("Random weights")
        for fact in ("Devicecpu", "Dtypeint8", "Backendonnx (int8)", "Queued tokens0"):
            expect()(card).to_contain_text(fact)
    requests = int(page.locator("#total-requests").inner_text())
    for _ in range(3):  # the page is not reloaded: its own refresh must pick these up
        answered = keyed.api("POST", "/v1/rerank", json={"query": "q", "documents": DOCUMENTS})
        assert answered.status_code == 200
    expect()(page.locator("#total-requests")).to_have_text(str(requests + 3), timeout=WAIT_MS)
    served = page.locator(f"article.model[data-model='{answered.headers['x-rerank-model']}']")
    expect()(served).to_contain_text(re.compile(r"p50 latency\d+\.\d ms"), timeout=WAIT_MS)
    page.screenshot(path=screenshots / "status.png", full_page=True)


@pytest.mark.parametrize("path", ["/", "/status"])
def test_the_pages_pass_axe_and_fit_a_phone(open_page, keyless, screenshots, path):
    from axe_playwright_python.sync_playwright import Axe

    page = open_page(keyless, path, viewport={"width": 360, "height": 740}, is_mobile=True)
    if path == "/":  # with a ranking of the prefilled example on it
        example = page.get_by_label("Documents").input_value().splitlines()
        page.get_by_role("button", name="Rerank").click()
        expect()(page.locator("#ranking > li")).to_have_count(len(example), timeout=WAIT_MS)
    else:
        expect()(page.locator("article.model")).to_have_count(len(MODELS), timeout=WAIT_MS)
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    name = "phone-playground.png" if path == "/" else "phone-status.png"
    page.screenshot(path=screenshots / name, full_page=True)
