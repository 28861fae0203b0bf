// MarketPrism console: the few behaviours htmx attributes do not cover. No inline script anywhere (CSP).
(function () {
  "use strict";
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  // every htmx request carries the session's CSRF token (the server refuses a POST without it)
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });
  // keep the ticked alerts ticked when the list is refreshed from the stream
  var ticked = new Set();
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "alert-list") {
      ticked = new Set(Array.prototype.map.call(
        event.detail.target.querySelectorAll('input[name="fingerprint"]:checked'), function (box) { return box.value; }));
    }
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "alert-list") {
      event.detail.target.querySelectorAll('input[name="fingerprint"]').forEach(function (box) {
        box.checked = ticked.has(box.value);
      });
    }
  });
  // the header says whether the page is receiving live updates
  function live(text) {
    var status = document.getElementById("live");
    if (status) { status.textContent = text; status.dataset.state = text; }
  }
  // on every (re)connection the live regions re-read their fragment: whatever changed between the page's
  // render (or the lost connection) and the stream's start is not missed
  document.addEventListener("htmx:sseOpen", function () {
    live("live");
    document.querySelectorAll('[hx-trigger*="refresh-live"]').forEach(function (el) { htmx.trigger(el, "refresh-live"); });
  });
  document.addEventListener("htmx:sseError", function () { live("reconnecting"); });
  // a refused or failed request says why instead of doing nothing
  document.addEventListener("htmx:responseError", function (event) {
    var flash = document.getElementById("flash");
    if (!flash) { return; }
    var xhr = event.detail.xhr, text = xhr.status + " " + xhr.statusText;
    try { var doc = JSON.parse(xhr.responseText); if (typeof doc.detail === "string") { text += ": " + doc.detail; } }
    catch (e) { /* not JSON */ }
    var p = document.createElement("p");
    p.className = "flash error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    flash.replaceChildren(p);
  });
})();
