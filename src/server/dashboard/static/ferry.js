// ferry's dashboard: the only script. Pages work without it; with it, the live parts are
// re-rendered from server fragments whenever the event stream says something changed.
(function () {
  "use strict";

  function human(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  // Elapsed time of whatever is running.
  function tick() {
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var since = Date.parse(el.getAttribute("data-since"));
      if (!isNaN(since)) el.textContent = human((Date.now() - since) / 1000);
    });
  }

  function typing(el) {
    var a = document.activeElement;
    return a && el.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }

  function live(el) {
    var src = el.getAttribute("data-live-src");
    var stream = null;
    var timer = null;
    var openDetails = function () {
      return Array.prototype.map.call(el.querySelectorAll("details[open]"), function (d) {
        return d.closest("[id]") ? d.closest("[id]").id + ":" + Array.prototype.indexOf.call(el.querySelectorAll("details"), d) : "";
      });
    };
    function refresh() {
      timer = null;
      if (typing(el)) { schedule(1000); return; }
      var open = openDetails();
      fetch(src, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          el.innerHTML = html;
          var all = el.querySelectorAll("details");
          open.forEach(function (key) {
            var i = parseInt(key.split(":").pop(), 10);
            if (all[i]) all[i].open = true;
          });
          el.setAttribute("data-refreshed", String(Date.now()));
          tick();
          if (el.querySelector("[data-final]") && stream) { stream.close(); stream = null; }
        })
        .catch(function () { schedule(2000); });
    }
    function schedule(ms) {
      if (!timer) timer = setTimeout(refresh, ms || 150);
    }
    if (el.querySelector("[data-final]") || !window.EventSource) return;
    stream = new EventSource(el.getAttribute("data-live-events"));
    ["deployment", "step", "probe", "host", "lagged"].forEach(function (name) {
      stream.addEventListener(name, function () { schedule(); });
    });
    // catch up on anything missed while the stream (re)connected
    stream.addEventListener("open", function () { schedule(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live-src]").forEach(live);
    tick();
    setInterval(tick, 1000);
  });
})();
