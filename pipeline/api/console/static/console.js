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
