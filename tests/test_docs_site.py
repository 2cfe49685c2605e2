"""The built documentation site in a real browser: the math renders and nothing leaves the machine.

Opens pages of the site built by ``mkdocs build --strict`` (into ``site/``) in headless Debian
chromium, served from 127.0.0.1, and checks that KaTeX rendered every formula (``.katex``
elements, no raw ``$``, ``\\(`` or ``\\[`` left in the text) and that every request the pages
made went to the site itself. Requests are read from chromium's NetLog (``--log-net-log``):
those a page initiated carry the page's origin as initiator, the navigation is the main-frame
request, and chromium's own background requests (updates, time, autofill) carry none and are
not the site's doing. ``--host-resolver-rules`` also makes every other host unresolvable, so
nothing can leave while the test runs.

Over every built page (no browser needed): no raw markup a reader would see (reST roles, ``::``
blocks, TeX delimiters, ``$…$``, backtick pairs, a ``>>>`` example read as block quotes), no
source code or TeX delimiters in the search index, and the benchmark page's order (headline,
one plot, then the tables folded). In the browser, at a phone's 390 px: no page is wider than
the screen, and nothing in its content sticks out except inside a box that scrolls (tables,
code, display math).

Marked ``docs``. `.ci/run` builds the site, installs chromium and runs these tests with
HMFUSION_DOCS_REQUIRED=1 (a missing site or browser then fails); elsewhere they skip cleanly
when either is missing.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import NamedTuple

import pytest

pytestmark = pytest.mark.docs

SITE = pathlib.Path(__file__).resolve().parents[1] / "site"
REQUIRED = os.environ.get("HMFUSION_DOCS_REQUIRED") == "1"
PAGES = ("reference/fusion/", "how-it-works/")


def _require(condition: bool, reason: str) -> None:
    if not condition:
        if REQUIRED:
            pytest.fail(reason + " (HMFUSION_DOCS_REQUIRED=1)")
        pytest.skip(reason)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    _require(found is not None, "chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def serve() -> Iterator:
    """serve(directory) -> the http://127.0.0.1:<port> origin serving it, for this module."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    def start(directory: pathlib.Path) -> str:
        handler = functools.partial(Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class Request(NamedTuple):
    url: str
    initiator: str
    request_type: str


class Page(NamedTuple):
    dom: str
    requests: list[Request]


def load(url: str, workdir: pathlib.Path) -> Page:
    """The DOM of ``url`` after its scripts ran, and every URL request chromium started."""
    netlog = workdir / "netlog.json"
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={workdir / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={netlog}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return Page(result.stdout, _requests(netlog))


def _requests(netlog: pathlib.Path) -> list[Request]:
    text = netlog.read_text(encoding="utf-8")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        Request(p["url"], p.get("initiator", ""), p.get("request_type", ""))
        for p in (e.get("params", {}) for e in log["events"] if e["type"] == start_job)
        if "url" in p  # the event's end carries no parameters
    ]


def site_requests(page: Page, origin: str) -> list[Request]:
    """The requests the page made: its navigation and whatever its documents initiated."""
    return [
        r
        for r in page.requests
        if r.request_type == "main frame" or r.initiator not in ("", "not an origin")
    ]


def outside(requests: list[Request], origin: str) -> list[str]:
    return [r.url for r in requests if not r.url.startswith(origin + "/")]


class _MathReport(HTMLParser):
    """Counts KaTeX output and collects the text a reader sees outside code."""

    SKIP = {"script", "style", "pre", "code", "annotation", "noscript"}

    def __init__(self) -> None:
        super().__init__()
        self.classes: dict[str, int] = {}
        self.text: list[str] = []
        self.tex: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name in (dict(attrs).get("class") or "").split():
            self.classes[name] = self.classes.get(name, 0) + 1
        if tag not in ("br", "img", "hr", "meta", "link", "input", "source", "wbr"):
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if "annotation" in self._stack:
            self.tex.append(data)
        elif not self.SKIP.intersection(self._stack):
            self.text.append(data)


def math_report(dom: str) -> _MathReport:
    report = _MathReport()
    report.feed(dom)
    return report


@pytest.fixture(scope="module")
def site(serve) -> str:
    _require(
        (SITE / "reference" / "fusion" / "index.html").is_file(),
        "the site is not built (mkdocs build --strict)",
    )
    return serve(SITE)


@pytest.mark.parametrize("path", PAGES)
def test_math_renders_and_no_request_leaves(site, path, tmp_path):
    page = load(f"{site}/{path}", tmp_path)
    report = math_report(page.dom)
    rendered, written = report.classes.get("katex", 0), report.classes.get("arithmatex", 0)
    assert written > 0, "the page has no math to render"
    assert rendered >= written, f"{rendered} KaTeX renderings for {written} formulas"
    assert report.classes.get("katex-error", 0) == 0
    visible = "".join(report.text)
    for raw in ("$", "\\(", "\\[", "\\otimes"):
        assert raw not in visible, f"unrendered {raw!r} in the page text"

    requests = site_requests(page, site)
    assert outside(requests, site) == []
    fonts = [r.url for r in requests if r.url.endswith(".woff2")]
    assert fonts and all("/assets/katex/fonts/" in url for url in fonts)


def test_hm_reference_page_shows_the_formula(site, tmp_path):
    page = load(f"{site}/reference/fusion/", tmp_path)
    assert 'id="hmfusion.HMConcatFusion"' in page.dom  # the public path: hmfusion.HMConcatFusion
    tex = " ".join(math_report(page.dom).tex)
    assert "A_j \\otimes B_j" in tex


class _VisibleText(HTMLParser):
    """The text of a built page a reader sees as prose: not code, scripts or math (arithmatex)."""

    SKIP = {"script", "style", "pre", "code", "noscript", "svg", "textarea", "math"}
    VOID = {"br", "img", "hr", "meta", "link", "input", "source", "wbr", "path", "use"}

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        math = "arithmatex" in (dict(attrs).get("class") or "").split()
        self._stack.append("math" if math else tag)

    def handle_endtag(self, tag: str) -> None:
        # a math span or div ends with its own tag; its TeX holds no elements
        while self._stack:
            top = self._stack.pop()
            if top == tag or (top == "math" and tag in ("span", "div")):
                break

    def handle_data(self, data: str) -> None:
        if not self.SKIP.intersection(self._stack):
            self.text.append(data)


#: Markup that a page shows raw when a docstring or page is not Markdown as the site renders it.
RAW_MARKUP = {
    "reST role": re.compile(r":(math|class|func|meth|mod|attr|ref):`"),
    "reST literal block": re.compile(r"\b\w+::\s*$", re.M),
    "unrendered TeX delimiter": re.compile(r"\\[(\[]"),
    "unrendered $…$": re.compile(r"\$[^$\s][^$]*\$"),
    "unrendered `code`": re.compile(r"`[^`\n]+`"),
}


def raw_markup(html: str) -> list[str]:
    parser = _VisibleText()
    parser.feed(html)
    text = "".join(parser.text)
    return [
        f"{what}: {text[max(0, m.start() - 40) : m.end() + 40]!r}"
        for what, pattern in RAW_MARKUP.items()
        for m in pattern.finditer(text)
    ]


def _built(path: pathlib.Path) -> None:
    _require(path.is_file(), f"the site is not built ({path} is missing; mkdocs build --strict)")


def test_no_page_shows_raw_markup():
    _built(SITE / "index.html")
    pages = sorted(SITE.rglob("*.html"))
    assert len(pages) > 20
    found = [
        f"{page.relative_to(SITE)}: {problem}"
        for page in pages
        if page.name != "404.html"
        for problem in raw_markup(page.read_text(encoding="utf-8"))
    ]
    assert found == []
    # no page quotes: a docstring's ">>>" example read as Markdown is three nested block quotes
    quoting = [str(p.relative_to(SITE)) for p in pages if "<blockquote" in p.read_text("utf-8")]
    assert quoting == []


@pytest.mark.parametrize(
    "html, what",
    [
        ("<p>b = :math:`\\sqrt{3}`</p>", "reST role"),
        ("<p>Example::</p><pre><code>&gt;&gt;&gt; 1</code></pre>", "reST literal block"),
        ("<p>the weight \\(W\\) as text</p>", "unrendered TeX delimiter"),
        ("<td>U | shape (n, r), `V` shape</td>", "unrendered `code`"),
        ("<p>costs $n D$ here</p>", "unrendered $…$"),
    ],
)
def test_the_raw_markup_check_finds_raw_markup(html, what):
    assert what in [p.split(":")[0] for p in raw_markup(html)]


def test_rendered_markup_is_not_raw():
    html = (
        '<p>with <span class="arithmatex">\\(b = \\sqrt{3}\\)</span> and <code>`x`</code></p>'
        '<div class="arithmatex">\\[ W = A \\otimes B \\]</div><pre><code>a :: b</code></pre>'
        "<p>Example:</p><p>after</p>"
    )
    assert raw_markup(html) == []


def test_the_benchmark_page_leads_with_a_summary_and_one_plot():
    page = SITE / "benchmark" / "index.html"
    _built(page)
    html = page.read_text(encoding="utf-8")
    article = html[html.index("<article") : html.index("</article>")]
    assert len(re.findall(r'<img[^>]*src="speedup.png"', article)) == 1
    plot, first_table = article.index("speedup.png"), article.index("<table")
    assert article.index("Targets: ") < plot < first_table
    # every generated table is folded: inside a <details> block (the notes, written by hand,
    # come after the folds and stay open)
    tables = article[: article.index('id="notes')]
    starts = [m.start() for m in re.finditer("<table", tables)]
    assert starts and all(
        tables[:at].count("<details") == tables[:at].count("</details>") + 1 for at in starts
    )


#: What only a function's source holds: its def line, or mkdocstrings' "Source code in" block.
SOURCE = re.compile(r"\bdef \w+\(.*\)( -> [^:]+)?:|Source code in ")


def test_the_search_index_holds_text_not_source_or_tex_delimiters():
    index = SITE / "search" / "search_index.json"
    _built(index)
    docs = json.loads(index.read_text(encoding="utf-8"))["docs"]
    assert len(docs) > 100
    with_source = [d["location"] for d in docs if SOURCE.search(d["text"])]
    with_tex = [d["location"] for d in docs if re.search(r"\\[()\[\]]", d["text"])]
    with_rest = [d["location"] for d in docs if ":math:" in d["text"] or "Example::" in d["text"]]
    assert (with_source, with_tex, with_rest) == ([], [], [])
    # the formulas stay searchable, as TeX without delimiters
    assert any("A_j \\otimes B_j" in d["text"] for d in docs)


def test_the_source_check_sees_source():
    assert SOURCE.search("Source code in <code>src/hmfusion/fusion/base.py</code>")
    assert SOURCE.search("def forward(self, xs: Sequence[Tensor]) -> Tensor:\n    return")
    assert not SOURCE.search("<code>forward(xs)</code> returns Y; define W as")


#: The pages read on a phone: none may be wider than the screen outside its scroll boxes.
PHONE_PAGES = ("", "reference/fusion/", "how-it-works/", "training/", "benchmark/")
PHONE_WIDTH = 390

# Loads a page of the site in an iframe as wide as a phone and writes, into <pre id="result">,
# the page's width and scroll width and the elements of its content that stick out of the
# screen without an ancestor that scrolls or clips them (tables, code and display math scroll).
_PROBE = """<!doctype html><meta charset="utf-8"><body style="margin:0">
<iframe id="page" src="{src}" style="width:{width}px;height:900px;border:0"></iframe>
<pre id="result">pending</pre>
<script>
document.getElementById("page").addEventListener("load", () => setTimeout(() => {{
  const doc = document.getElementById("page").contentDocument, win = doc.defaultView;
  const width = doc.documentElement.clientWidth;
  const held = el => {{
    for (let a = el.parentElement; a && a !== doc.body; a = a.parentElement)
      if (win.getComputedStyle(a).overflowX !== "visible") return true;
    return false;
  }};
  const wide = [];
  for (const el of doc.querySelectorAll("{content} *")) {{
    const r = el.getBoundingClientRect();
    const where = `${{Math.round(r.left)}}..${{Math.round(r.right)}}`;
    if (r.width && (r.right > width + 1 || r.left < -1) && !held(el))
      wide.push(`${{el.tagName}}.${{el.className}} ${{where}}`);
  }}
  document.getElementById("result").textContent = JSON.stringify(
    {{width, scrollWidth: doc.documentElement.scrollWidth, wide}});
}}, 1000));
</script>"""


def phone_layout(serve, root: pathlib.Path, src: str, content: str, tmp_path) -> dict:
    """The probe's report for ``src`` (a path under ``root``) at ``PHONE_WIDTH``."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "root").symlink_to(root, target_is_directory=True)
    probe = _PROBE.format(src=f"root/{src}", width=PHONE_WIDTH, content=content)
    (www / "probe.html").write_text(probe, encoding="utf-8")
    dom = load(f"{serve(www)}/probe.html", tmp_path).dom
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert found and found.group(1) != "pending", "the probe did not run"
    return json.loads(found.group(1))


@pytest.mark.parametrize("path", PHONE_PAGES, ids=lambda p: p or "home")
def test_pages_fit_a_phone(site, serve, path, tmp_path):
    report = phone_layout(serve, SITE, path, ".md-content", tmp_path)
    assert report["width"] <= PHONE_WIDTH
    assert report["scrollWidth"] <= report["width"], report
    assert report["wide"] == []


def test_the_phone_check_sees_a_page_too_wide(serve, tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    (root / "index.html").write_text(
        '<!doctype html><div class="md-content"><p style="width:700px">wide</p>'
        '<div style="overflow-x:auto"><p style="width:900px">scrolls</p></div></div>',
        encoding="utf-8",
    )
    report = phone_layout(serve, root, "index.html", ".md-content", tmp_path)
    assert report["scrollWidth"] > report["width"]
    assert [entry.split(" ")[0] for entry in report["wide"]] == ["P."]


def test_the_request_check_sees_a_page_that_calls_out(serve, tmp_path):
    # The check above must be able to fail: a page loading a stylesheet from another host.
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text(
        '<!doctype html><link rel="stylesheet" href="https://cdn.example.invalid/k.css"><p>x</p>',
        encoding="utf-8",
    )
    origin = serve(root)
    page = load(f"{origin}/", tmp_path)
    assert outside(site_requests(page, origin), origin) == ["https://cdn.example.invalid/k.css"]
