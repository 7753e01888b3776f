/* Pollen dashboard: live updates and the run page's charts. Shipped in the package,
 * no framework. The server renders every page; this script only listens to /events
 * and, when an event concerns the page, fetches the page's <main> again and swaps in
 * the parts that changed. Charts are drawn by the vendored uPlot from
 * /api/runs/ID/rounds. Without JavaScript the pages read the same, without updates. */
(function () {
  "use strict";

  var MIN_GAP_MS = 700; // with the server's 250 ms pace: any event shown within 1 s
  var RETRY_MS = 5000; // after a refused stream (a token gone, too many live pages)

  var liveOn = (document.body.getAttribute("data-live-on") || "").split(/\s+/).filter(Boolean);
  var indicator = document.getElementById("live");

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  /* ---- charts: one per metric, from the run's rounds ---- */
  var charts = (function () {
    var section = document.getElementById("charts");
    if (!section || typeof window.uPlot !== "function") {
      return { refresh: function () { return Promise.resolve(); } };
    }
    var url = section.getAttribute("data-rounds");
    var plots = {};

    function grid() { return document.getElementById("charts-grid"); }

    function width(box) { return Math.max(200, Math.floor(box.getBoundingClientRect().width)); }

    function make(name, data) {
      var box = document.createElement("figure");
      box.className = "chart";
      box.setAttribute("data-metric", name);
      var caption = document.createElement("figcaption");
      caption.textContent = name;
      box.appendChild(caption);
      grid().appendChild(box);
      var ink = cssVar("--muted", "#677084");
      var line = cssVar("--line", "#e3e6ec");
      var axis = { stroke: ink, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
      var options = {
        width: width(box),
        height: 170,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: false } },
        axes: [
          Object.assign({ incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, axis),
          Object.assign({ size: 56 }, axis),
        ],
        series: [
          { label: "round" },
          {
            label: name,
            stroke: cssVar("--accent", "#c27c0e"),
            width: 2,
            spanGaps: true,
            points: { show: true, size: 6, fill: cssVar("--card", "#fff") },
          },
        ],
      };
      return { box: box, plot: new window.uPlot(options, data, box) };
    }

    function draw(body) {
      var empty = document.getElementById("charts-empty");
      body.series.forEach(function (metric) {
        var data = [body.rounds, metric.values];
        var chart = plots[metric.name];
        if (chart && chart.box.isConnected) {
          chart.plot.setData(data);
        } else {
          chart = plots[metric.name] = make(metric.name, data);
        }
        var points = metric.values.filter(function (v) { return v !== null; }).length;
        chart.box.setAttribute("data-points", String(points));
      });
      if (empty) {
        empty.hidden = body.series.length > 0;
        empty.textContent = body.rounds.length
          ? "The rounds reported so far carry no numeric metric."
          : "No rounds reported yet: each metric is plotted here as its rounds complete.";
      }
    }

    function refresh() {
      return fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (answer) {
          if (!answer.ok) { throw new Error("rounds: HTTP " + answer.status); }
          return answer.json();
        })
        .then(draw);
    }

    var resizing = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizing);
      resizing = setTimeout(function () {
        Object.keys(plots).forEach(function (name) {
          var chart = plots[name];
          chart.plot.setSize({ width: width(chart.box), height: 170 });
        });
      }, 100);
    });
    refresh().catch(function () { /* the table below holds the same figures */ });
    return { refresh: refresh };
  })();

  if (!liveOn.length || typeof window.EventSource !== "function" || !indicator) {
    return;
  }

  /* ---- live: refresh <main> when an event concerns this page ---- */
  var inFlight = false;
  var pending = false;
  var timer = null;
  var lastRefresh = 0;
  var everOpen = false;

  function show(state) {
    indicator.hidden = false;
    indicator.className = "live live-" + state;
    indicator.textContent = state === "on" ? "Live" : "Reconnecting…";
    indicator.title = state === "on"
      ? "This page updates as the federation changes"
      : "The connection to the SuperLink broke; trying again";
  }

  function concerns(event) {
    return liveOn.indexOf(event.kind) >= 0 || liveOn.indexOf(event.kind + ":" + event.run) >= 0;
  }

  function schedule() {
    pending = true;
    if (inFlight || timer || document.hidden) { return; } // a hidden tab catches up when shown
    var wait = Math.max(0, lastRefresh + MIN_GAP_MS - Date.now());
    timer = setTimeout(function () { timer = null; refresh(); }, wait);
  }

  function refresh() {
    pending = false;
    inFlight = true;
    lastRefresh = Date.now();
    Promise.all([refreshMain(), charts.refresh()])
      .catch(function () { show("off"); })
      .then(function () {
        inFlight = false;
        if (pending) { schedule(); }
      });
  }

  function refreshMain() {
    return fetch(location.pathname + location.search, {
      headers: { "X-Pollen-Part": "main" },
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (answer) {
        if (!answer.ok) { throw new Error("page: HTTP " + answer.status); }
        return answer.text();
      })
      .then(swap);
  }

  /* Swap in the parts of <main> that changed; keep the ones marked data-keep (the
   * charts) and the ones equal to what is shown. */
  function swap(html) {
    var main = document.querySelector("main");
    var template = document.createElement("template");
    template.innerHTML = html;
    var parts = Array.prototype.slice.call(template.content.children);
    var shown = Array.prototype.slice.call(main.children);
    var next = parts.map(function (part, i) {
      var kept = part.id && part.hasAttribute("data-keep") ? document.getElementById(part.id) : null;
      if (kept && kept.parentNode === main) { return kept; }
      var before = shown[i];
      return before && before.isEqualNode(part) ? before : part;
    });
    var changed = next.length !== shown.length || next.some(function (el, i) { return el !== shown[i]; });
    if (changed) { main.replaceChildren.apply(main, next); }
  }

  function connect() {
    var source = new EventSource("/events");
    source.onopen = function () {
      show("on");
      if (everOpen) { schedule(); } // back after a break: catch up on what was missed
      everOpen = true;
    };
    source.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (concerns(event)) { schedule(); }
    };
    source.onerror = function () {
      show("off");
      if (source.readyState === EventSource.CLOSED) { // refused: the browser will not retry
        setTimeout(connect, RETRY_MS);
      }
    };
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && pending) { schedule(); }
  });

  connect();
})();
