// Refreshes the status page every few seconds from /status.json?html=1: the service renders
// each section (streamsync/runtime/statuspage/render.py, HTML-escaped) and this swaps them in.
"use strict";
(function () {
  var PERIOD_MS = 2000;
  var stamp = document.getElementById("summary");
  function refresh() {
    fetch("/status.json?html=1", { cache: "no-store", credentials: "omit" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) {
        Object.keys(data.html).forEach(function (id) {
          var el = document.getElementById(id);
          if (el) { el.innerHTML = data.html[id]; }
        });
        document.body.classList.remove("stale");
        document.body.dataset.refreshed = data.generated_at;
      })
      .catch(function () { document.body.classList.add("stale"); })
      .finally(function () { setTimeout(refresh, PERIOD_MS); });
  }
  if (stamp) { setTimeout(refresh, PERIOD_MS); }
})();
