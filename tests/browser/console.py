#!/usr/bin/env python3
"""Drives the operator console (ui.sock, DESIGN section 14) in Debian's headless Chromium.

Started by tests/console_browser.rs, which serves the console on --url (a TCP forwarder
to ui.sock) and holds calls when asked. The two talk in lines:

  driver -> test (stdout, one JSON object a line):
    {"event": "approvals_open", ...}  /approvals is open: make the held call now
    {"event": "need_csrf_run"}        make a second held call, for the CSRF attempt
    {"ok": true, ...}                 everything passed (the last line), exit 0
    {"ok": false, "step": ..., ...}   a check failed (the last line), exit 1
    {"skip": "why"}                   selenium is missing, exit 77
  test -> driver (stdin): one run id a line, after each of the two events above.

Every wait is bounded (WebDriverWait of at most 20 s, stdin reads of at most 30 s).
Chromium and chromedriver are Debian's (`apt-get install chromium chromium-driver`),
never downloaded: selenium-manager is kept offline.
"""

import argparse
import json
import os
import select
import signal
import sys
import threading
import time
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

EXIT_SKIP = 77
WAIT = 20  # seconds, the longest any browser wait may take
STDIN_WAIT = 30  # seconds the test may take to answer with a run id


def emit(message):
    print(json.dumps(message), flush=True)


try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as error:
    emit({"skip": f"selenium is not installed ({error}); "
                  "pip install -r tests/browser/requirements.txt (make python-deps)"})
    sys.exit(EXIT_SKIP)


class Failure(Exception):
    """A check that failed; the message says what was expected and what was seen."""


# Keeps every EventSource the page opens, so the driver can tell when the live stream
# is connected before it asks for the held call (injected before any page script runs).
TRACK_EVENT_SOURCES = """
(() => {
  window.__heroTestEventSources = [];
  const Original = window.EventSource;
  if (!Original) return;
  window.EventSource = new Proxy(Original, {
    construct(target, args) {
      const source = Reflect.construct(target, args);
      window.__heroTestEventSources.push(source);
      return source;
    }
  });
})();
"""


# What check_page looks at, read in one step.
CHECK_PAGE = """
const meta = document.querySelector('meta[name="csrf-token"]');
const forms = Array.from(document.forms).filter(f => (f.getAttribute('method') || '').toLowerCase() === 'post');
const carries = f => Array.from(f.querySelectorAll('input[type="hidden"][name="csrf"]')).some(i => (i.value || '').trim());
return {
  token: meta ? meta.getAttribute('content') : null,
  forms: forms.length,
  bare: forms.filter(f => !carries(f)).map(f => f.getAttribute('action')),
};
"""


class Stdin:
    """Line reads from stdin with a timeout (unbuffered, so select() tells the truth)."""

    def __init__(self):
        self.fd = sys.stdin.fileno()
        self.buffer = b""

    def line(self, what, timeout=STDIN_WAIT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"the test sent no {what} within {timeout} s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise Failure(f"stdin closed before the test sent {what}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().strip()


class Attacker:
    """Another origin (127.0.0.1 on another port) whose page auto-submits a form to the console."""

    def __init__(self, action, fields):
        inputs = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items()
        )
        page = (
            "<!doctype html><html><head><title>You won a prize</title></head><body>"
            "<h1>Claim your prize</h1>"
            f'<form id="f" method="post" action="{escape(action)}">{inputs}</form>'
            "<script>document.getElementById('f').submit();</script>"
            "</body></html>"
        ).encode()
        attacker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                attacker.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.served = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/prize"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Console:
    def __init__(self, args):
        self.args = args
        self.base = args.url.rstrip("/")
        self.step = "starting Chromium"
        self.report = {"pages": {}}
        self.stdin = Stdin()
        self.driver = None
        if args.artifacts:
            os.makedirs(args.artifacts, exist_ok=True)

    # ---- plumbing ------------------------------------------------------------------

    def start(self):
        options = webdriver.ChromeOptions()
        options.binary_location = self.args.chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                     "--window-size=1280,800"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=self.args.chromedriver)
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(WAIT)
        self.driver.set_script_timeout(WAIT)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRACK_EVENT_SOURCES})

    def quit(self):
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:  # the browser may be gone already
                pass
            self.driver = None

    def wait(self, what, condition, timeout=WAIT):
        """Waits until condition(driver) is truthy and returns it; fails saying `what`."""
        try:
            # The console swaps its live region on every event: an element seen a moment ago
            # may be gone; the next poll looks again.
            return WebDriverWait(self.driver, min(timeout, WAIT), poll_frequency=0.1,
                                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                                 ).until(condition)
        except TimeoutException:
            raise Failure(f"timed out after {min(timeout, WAIT)} s waiting for {what}") from None

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def path(self):
        return urlparse(self.driver.current_url).path

    def open(self, path):
        self.driver.get(self.base + path)
        self.wait(f"{path} to finish loading", lambda d: d.execute_script("return document.readyState") == "complete")

    def text(self):
        return self.driver.find_element(By.TAG_NAME, "body").text

    def shot(self, name):
        if self.args.artifacts:
            self.driver.save_screenshot(os.path.join(self.args.artifacts, f"{name}.png"))

    def text_of(self, css):
        """An element's visible text, read in one step (a live refresh cannot split it); None if absent."""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css)

    def check_page(self, name):
        """Every page has a CSRF meta token and every state-changing (POST) form a hidden csrf input."""
        seen = self.js(CHECK_PAGE)
        if not (seen["token"] or "").strip():
            raise Failure(f'{self.path()} has no <meta name="csrf-token" content="..."> (page: {self.text()[:300]!r})')
        if seen["bare"]:
            raise Failure(f"{self.path()}: POST forms without a hidden csrf input: {seen['bare']}")
        self.report["pages"][name] = {"path": self.path(), "title": self.driver.title, "post_forms": seen["forms"]}
        self.shot(name)

    def failure_context(self):
        context = {}
        if self.driver is None:
            return context
        try:
            context = {"url": self.driver.current_url, "title": self.driver.title, "text": self.text()[:2000]}
            self.shot("failure")
            logs = self.driver.get_log("browser")
            context["console_log"] = [entry.get("message") for entry in logs][-20:]
        except Exception as error:  # the page itself may be what broke
            context.setdefault("context_error", str(error))
        return context

    # ---- scenarios -----------------------------------------------------------------

    def pages(self):
        self.step = "GET / redirects to /runs"
        self.open("/")
        self.wait("/ to land on /runs", lambda d: self.path() == "/runs")
        self.check_page("runs")
        for name in ("keys", "policy"):
            self.step = f"GET /{name}"
            self.open(f"/{name}")
            self.check_page(name)

    def inert(self, page):
        """The hostile description is text on the page, not markup, and nothing ran."""
        self.wait("the page's images to settle (an onerror handler would have run)",
                  lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        seen = {
            "pwned": self.js("return typeof window.__pwned"),
            "injected_img": len(self.driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]')),
            "injected_script": self.js(
                "return Array.from(document.scripts).filter(s => s.textContent.includes('__pwned')).length"),
            "onerror_attributes": self.js(
                "return Array.from(document.querySelectorAll('[onerror]')).length"),
        }
        if seen != {"pwned": "undefined", "injected_img": 0, "injected_script": 0, "onerror_attributes": 0}:
            raise Failure(f"{page}: the hostile description became markup or ran: {seen}")
        return seen

    def catalog(self):
        payload, capability = self.args.payload, self.args.capability
        self.step = "the catalog shows the hostile description as text"
        self.open("/catalog")
        self.check_page("catalog")
        visible = "<script>window.__pwned=1</script>"
        self.wait(f"/catalog to show {visible!r} as text", lambda d: visible in self.text())
        listed = self.inert("/catalog")

        self.step = f"/catalog/{capability} shows the hostile description as text"
        self.open(f"/catalog/{capability}")
        self.check_page("capability")
        self.wait(f"/catalog/{capability} to show the whole description {payload!r} as text",
                  lambda d: payload in self.text())
        described = self.inert(f"/catalog/{capability}")
        self.report["catalog"] = {"list": listed, "capability": described}

    def approve_live(self):
        note = self.args.note
        self.step = "open /approvals and wait for its live stream"
        self.open("/approvals")
        self.check_page("approvals")
        if not self.driver.find_elements(By.CSS_SELECTOR, "section#live"):
            raise Failure('/approvals has no <section id="live">')
        sentinel = f"kept-{time.time_ns()}"
        self.js("window.__heroTestSentinel = arguments[0];", sentinel)
        # The stream should be connected before the call is made; a page that does not use
        # EventSource is not failed for it (the appearance below is what counts).
        try:
            WebDriverWait(self.driver, 10, poll_frequency=0.1).until(lambda d: d.execute_script(
                "return (window.__heroTestEventSources || []).some(s => s.readyState === 1)"
                " || (document.getElementById('live-state') || {}).textContent === 'live'"))
            connected = True
        except TimeoutException:
            connected = False
        emit({"event": "approvals_open", "event_source_open": connected})

        self.step = "the held run appears in /approvals without a reload"
        run_id = self.stdin.line("held run id")
        selector = f'section#live article.approval[data-run-id="{run_id}"]'
        self.wait(f"{selector} to appear", lambda d: d.find_elements(By.CSS_SELECTOR, selector))
        if self.js("return window.__heroTestSentinel") != sentinel:
            raise Failure("/approvals was reloaded: the held run must appear live, without a reload")
        shown = self.text_of(selector)
        self.shot("approvals-live")

        self.step = "approve with a note from the browser"
        form_selector = f'{selector} form[method="post"][action="/runs/{run_id}/decide"]'
        if not self.driver.find_elements(By.CSS_SELECTOR, form_selector):
            raise Failure(f'the approval has no <form method="post" action="/runs/{run_id}/decide">: '
                          f'{self.js("return document.querySelector(arguments[0]).outerHTML", selector)[:1000]}')

        last_error = []

        def type_and_approve(driver):
            # A live refresh may replace the form while it is used: then type it afresh.
            try:
                form = driver.find_element(By.CSS_SELECTOR, form_selector)
                box = form.find_element(By.CSS_SELECTOR, 'textarea[name="note"]')
                box.clear()
                box.send_keys(note)
                form.find_element(By.CSS_SELECTOR, 'button[type="submit"][name="decision"][value="approve"]').click()
                return True
            except WebDriverException as error:  # stale, not yet clickable, covered: try again
                last_error[:] = [f"{type(error).__name__}: {error.msg}"]
                return False

        try:
            self.wait("the approval form to take the note and the click", type_and_approve)
        except Failure as error:
            raise Failure(f"{error}; last: {last_error}") from None
        self.wait(f"the browser to land on /runs/{run_id}", lambda d: self.path() == f"/runs/{run_id}")
        self.wait("the page to finish loading", lambda d: d.execute_script("return document.readyState") == "complete")

        self.step = f"/runs/{run_id} shows succeeded, the approver and the note"
        try:
            self.wait("#run-status to read succeeded",
                      lambda d: (self.text_of("#run-status") or "").strip().lower() == "succeeded")
        except Failure as error:
            raise Failure(f"{error}; it reads {self.text_of('#run-status')!r}") from None
        self.check_page("run")
        read = self.js("""
            const text = id => { const e = document.getElementById(id); return e ? e.innerText.trim() : null; };
            const note = document.getElementById('run-note');
            return {approver: text('run-approver'), note: text('run-note'),
                    markup: note ? note.querySelectorAll('*').length : 0,
                    html: note ? note.innerHTML : null};
        """)
        approver, shown_note, markup_in_note = read["approver"], read["note"], read["markup"]
        self.report["approved"] = {
            "run_id": run_id,
            "inbox_text": shown,
            "event_source_open": connected,
            "status": "succeeded",
            "approver": approver,
            "note": shown_note,
            "markup_in_note": markup_in_note,
        }
        if shown_note != note:
            raise Failure(f"#run-note reads {shown_note!r}, not the note typed: {note!r}")
        if markup_in_note:
            raise Failure(f"the note became markup in #run-note: {read['html']!r}")

    def csrf(self):
        self.step = "a second held run for the CSRF attempt"
        emit({"event": "need_csrf_run"})
        run_id = self.stdin.line("run id for the CSRF attempt")
        self.open("/approvals")
        selector = f'article.approval[data-run-id="{run_id}"]'
        # The worst case: the attacker even knows a valid token (leaked); only the
        # same-origin check stands between the page and the decision.
        field = f'{selector} input[type="hidden"][name="csrf"]'
        token = self.wait(f"{field} in /approvals", lambda d: d.execute_script(
            "const i = document.querySelector(arguments[0]); return i && i.value;", field))

        self.step = "a form on another origin posting approve is refused"
        action = f"{self.base}/runs/{run_id}/decide"
        attacker = Attacker(action, {"csrf": token, "decision": "approve", "note": "approved from another origin"})
        try:
            if urlparse(attacker.url).netloc == urlparse(self.base).netloc:
                raise Failure("the attacker's origin is the console's")
            self.driver.get(attacker.url)
            self.wait(f"the cross-origin POST to land on /runs/{run_id}/decide",
                      lambda d: self.path() == f"/runs/{run_id}/decide")
            self.wait("the document to finish loading",
                      lambda d: d.execute_script("return document.readyState") == "complete")
            def heading(driver):
                return driver.execute_script(
                    "return Array.from(document.querySelectorAll('h1')).map(h => h.innerText).join(' ');")
            try:
                self.wait("an <h1> containing Refused", lambda d: "Refused" in heading(d))
            except Failure as error:
                raise Failure(f"{error}; the page shows <h1> {heading(self.driver)!r}") from None
            self.shot("csrf-refused")
            self.report["csrf"] = {
                "run_id": run_id,
                "attacker_origin": f"http://{urlparse(attacker.url).netloc}",
                "attacker_page_served": attacker.served,
                "landed_on": self.driver.current_url,
                "heading": heading(self.driver),
            }
        finally:
            attacker.close()

    def narrow(self):
        """Report only, never a failure: how /runs and /approvals fit a phone-sized window."""
        self.step = "a narrow window"
        fit = {}
        try:
            self.driver.set_window_size(390, 844)
            for name in ("runs", "approvals"):
                self.open(f"/{name}")
                fit[name] = self.js("return document.documentElement.scrollWidth - window.innerWidth")
                self.shot(f"{name}-narrow")
        except (Failure, WebDriverException) as error:
            fit["error"] = str(error)
        self.report["narrow_overflow_px"] = fit

    def run(self):
        self.start()
        self.pages()
        self.catalog()
        self.approve_live()
        self.csrf()
        self.narrow()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the console, e.g. http://127.0.0.1:8090")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--capability", required=True, help="the capability with the hostile description")
    parser.add_argument("--payload", required=True, help="the hostile description, as the service sent it")
    parser.add_argument("--note", required=True, help="the note to approve with")
    parser.add_argument("--artifacts", help="a directory for screenshots (every page, and the failure)")
    args = parser.parse_args()

    os.environ["SE_OFFLINE"] = "true"  # never let selenium-manager reach for a download
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    console = Console(args)
    try:
        console.run()
    except (Failure, WebDriverException, OSError) as error:
        kind = "" if isinstance(error, Failure) else f"{type(error).__name__}: "
        emit({"ok": False, "step": console.step, "error": f"{kind}{error}".strip(),
              **console.failure_context(), "report": console.report})
        return 1
    finally:
        console.quit()
    emit({"ok": True, **console.report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
