// sagabox console: refresh the page's #live section every few seconds,
// keeping the URL (and so the filters), and pausing while the operator is
// typing or the tab is hidden. No framework, no build step.
(function () {
  "use strict";
  var every = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!every || !live) return;
  function busy() {
    var a = document.activeElement;
    return document.hidden || (a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA") && live.contains(a));
  }
  function tick() {
    if (busy()) { setTimeout(tick, every); return; }
    fetch(location.href, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (fresh) live.innerHTML = fresh.innerHTML;
        if (status) { status.classList.remove("stale"); status.textContent = "live"; }
      })
      .catch(function () { if (status) { status.classList.add("stale"); status.textContent = "reconnecting"; } })
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
