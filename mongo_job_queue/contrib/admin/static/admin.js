// The admin UI's only script of its own (served as a file: the CSP allows no inline script).
// Live refresh of the dashboard and job pages, paused while the tab is hidden; the throughput
// chart; the "check all" box; a confirmation before destructive single-job actions.
(function () {
  "use strict";

  function drawChart() {
    var el = document.getElementById("throughput");
    if (!el || typeof uPlot === "undefined") return;
    var s = JSON.parse(el.getAttribute("data-series"));
    el.textContent = "";
    var opts = {
      width: Math.max(320, Math.min(960, el.clientWidth || 720)),
      height: 220,
      series: [
        {},
        { label: "completed", stroke: "#2e7d32", width: 2 },
        { label: "failed", stroke: "#c62828", width: 2 }
      ],
      axes: [{}, { label: "jobs/min" }]
    };
    new uPlot(opts, [s.t, s.completed, s.failed], el);
  }

  function refreshing() {
    var live = document.getElementById("live");
    if (!live || typeof htmx === "undefined") return;
    var seconds = parseInt(document.body.getAttribute("data-refresh-s"), 10) || 5;
    var url = live.getAttribute("data-live-url");
    var timer = null;
    function tick() {
      if (document.visibilityState !== "visible") return;
      htmx.ajax("GET", url, { target: "#live", swap: "innerHTML" });
    }
    function start() { if (timer === null) timer = window.setInterval(tick, seconds * 1000); }
    function stop() { if (timer !== null) { window.clearInterval(timer); timer = null; } }
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") { tick(); start(); } else { stop(); }
    });
    document.body.addEventListener("htmx:afterSwap", function (event) {
      if (event.detail && event.detail.target === live) drawChart();
    });
    if (document.visibilityState === "visible") start();
    window.mjqRefresh = { stop: stop, start: start, running: function () { return timer !== null; } };
  }

  function checkAll() {
    var all = document.getElementById("check-all");
    if (!all) return;
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
    });
  }

  function confirmDestructive() {
    var del = document.getElementById("action-delete");
    if (!del) return;
    del.addEventListener("click", function (event) {
      if (!window.confirm("Delete this job? This cannot be undone.")) event.preventDefault();
    });
  }

  drawChart();
  refreshing();
  checkAll();
  confirmDestructive();
})();
