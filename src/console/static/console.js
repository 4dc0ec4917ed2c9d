// hero_executor console: live updates over server-sent events, nothing else.
// The page is rendered by the server; on an event this script fetches the same URL and
// swaps the part marked #live (keeping what is being typed), so there is one source of truth.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var dot = document.getElementById("live-dot");
  var state = document.getElementById("live-state");
  var pending = null;

  function say(text, on) {
    if (state) state.textContent = text;
    if (dot) dot.classList.toggle("on", !!on);
  }

  // Relative times ("3 min ago") tick on their own.
  function ago(ms) {
    var d = Date.now() - ms, a = Math.abs(d), s;
    if (a < 1000) return "just now";
    if (a < 60000) s = (a / 1000).toFixed(1) + " s";
    else if (a < 3600000) s = Math.floor(a / 60000) + " min";
    else if (a < 86400000) s = Math.floor(a / 3600000) + " h";
    else s = Math.floor(a / 86400000) + " d";
    return d > 0 ? s + " ago" : "in " + s;
  }
  function tick() {
    document.querySelectorAll("time[data-ms]").forEach(function (t) {
      t.textContent = ago(Number(t.getAttribute("data-ms")));
    });
  }
  setInterval(tick, 10000);

  // Typed notes and params survive a refresh of the live region.
  function typed(root) {
    var kept = {};
    root.querySelectorAll("textarea, input[type=text], input:not([type])").forEach(function (f, i) {
      var owner = f.closest("[data-run-id]");
      var key = (owner ? owner.getAttribute("data-run-id") : "") + "/" + (f.name || i);
      if (f.value) kept[key] = { value: f.value, focused: f === document.activeElement };
    });
    return kept;
  }
  function restore(root, kept) {
    root.querySelectorAll("textarea, input[type=text], input:not([type])").forEach(function (f, i) {
      var owner = f.closest("[data-run-id]");
      var key = (owner ? owner.getAttribute("data-run-id") : "") + "/" + (f.name || i);
      if (kept[key]) {
        f.value = kept[key].value;
        if (kept[key].focused) f.focus();
      }
    });
  }

  function refresh() {
    pending = null;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("live");
        var count = doc.getElementById("inbox-count");
        var mine = document.getElementById("inbox-count");
        if (count && mine) { mine.textContent = count.textContent; mine.className = count.className; }
        if (!next || !live) return;
        var before = {};
        live.querySelectorAll("[data-run-id]").forEach(function (e) { before[e.getAttribute("data-run-id")] = true; });
        var kept = typed(live);
        live.replaceWith(next);
        live = next;
        restore(live, kept);
        live.querySelectorAll("[data-run-id]").forEach(function (e) {
          if (!before[e.getAttribute("data-run-id")] && Object.keys(before).length) e.classList.add("fresh");
        });
      })
      .catch(function () { /* the next event tries again */ });
  }
  function soon() {
    if (!pending) pending = setTimeout(refresh, 250);
  }

  if (!window.EventSource) { say("live updates need a newer browser"); return; }
  var page = document.body.getAttribute("data-page");
  var events = new EventSource("/api/v1/events");
  // Whatever changed between the page's render and the stream's start (or a reconnect)
  // would be missed: read the page again once the stream is open.
  events.onopen = function () { say("live", true); soon(); };
  events.onerror = function () { say("reconnecting…", false); };
  // A browser allows six connections per host over HTTP/1.1; a page kept in the
  // back/forward cache would hold its stream open, and enough of them starve the rest.
  window.addEventListener("pagehide", function () { events.close(); });
  window.addEventListener("pageshow", function (e) { if (e.persisted) location.reload(); });
  function relevant(data) {
    if (!live) return false;
    var id = live.getAttribute("data-run-id");
    return !id || id === data.id;  // a run page follows its own run; lists follow all
  }
  events.addEventListener("run", function (e) {
    var data = {};
    try { data = JSON.parse(e.data); } catch (err) { return; }
    if (page === "runs" || page === "approvals") { if (relevant(data)) soon(); }
    else countSoon();
  });
  events.addEventListener("lagged", soon);

  // On pages without a live list, keep the inbox count right: at most once a second,
  // however many runs change (each read renders the inbox).
  var counting = null;
  function countSoon() {
    if (!counting) counting = setTimeout(function () { counting = null; refreshCount(); }, 1000);
  }
  function refreshCount() {
    if (page === "runs" || page === "approvals") return;
    fetch("/approvals", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var count = new DOMParser().parseFromString(html, "text/html").getElementById("inbox-count");
        var mine = document.getElementById("inbox-count");
        if (count && mine) { mine.textContent = count.textContent; mine.className = count.className; }
      })
      .catch(function () {});
  }
})();
