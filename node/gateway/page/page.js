// Swaps in the live part of the status page every refresh interval, without
// reloading: the node renders the part itself (GET /api/v0/overview.html, the
// same template as the first render), so this script only fetches and swaps.
(function () {
  "use strict";
  var me = document.currentScript;
  var every = parseInt(me && me.dataset.refreshMs, 10) || 1000;
  var live = document.getElementById("live");
  var state = document.getElementById("refresh");
  var busy = false;
  function show(text, cls) {
    state.textContent = text;
    state.className = cls;
  }
  function tick() {
    if (busy) return;
    busy = true;
    fetch("/api/v0/overview.html", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) throw new Error("signed out: open the page again with ?token=");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        show("live · updated " + new Date().toLocaleTimeString(), "ok");
      })
      .catch(function (e) {
        show("not updating: " + e.message, "bad");
      })
      .then(function () { busy = false; });
  }
  show("live · every " + every / 1000 + " s", "ok");
  setInterval(tick, every);
})();
