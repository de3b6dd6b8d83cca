// SAFEthing console: one server-sent-event stream per tab, closed while the tab is hidden;
// live values, events, action states and charts (uPlot). No eval, no inline script (CSP).
(function () {
  "use strict";
  var source = null;
  var reopened = false;  // after the first stream, a new one catches up on the lists
  var charts = {};

  function keys() { return document.body.dataset.live || ""; }

  function show(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return String(Math.round(v * 1e6) / 1e6);
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function when(t) {
    if (!t) return "never";
    var d = new Date(t * 1000);
    function p(n) { return (n < 10 ? "0" : "") + n; }
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function each(selector, fn) { document.querySelectorAll(selector).forEach(fn); }
  function sel(attr, value) { return "[" + attr + '="' + CSS.escape(value) + '"]'; }

  function onValue(m) {
    var id = m.thing + "|" + m.name;
    each(sel("data-value", id), function (el) { el.textContent = show(m.value); });
    each(sel("data-seq", id), function (el) { el.textContent = String(m.seq); });
    each(sel("data-time", id), function (el) { el.textContent = when(m.t); });
    each(sel("data-signer", id), function (el) { el.textContent = m.signer.slice(0, 8) + "…"; el.title = m.signer; });
    var c = charts[id];
    if (c && c.range === "hour" && typeof m.value === "number" && m.t > c.lastT) {
      c.data[0].push(m.t); c.data[1].push(m.value); c.lastT = m.t;
      c.plot.setData(c.data);
      c.el.dataset.points = String(c.data[0].length);
    }
  }

  function onDesired(m) {
    var id = m.thing + "|" + m.name;
    each(sel("data-desired", id), function (el) {
      el.textContent = m.state !== "none" && !m.known ? "sealed for the thing" : show(m.value);
    });
    each(sel("data-desired-state", id), function (el) {
      el.textContent = m.state; el.className = "badge " + m.state.replace(" ", "-");
    });
    each(sel("data-desired-time", id), function (el) { el.textContent = when(m.t); });
  }

  function onEvent(m) {
    each(sel("data-events", m.thing + "|" + m.topic), function (ul) {
      var empty = ul.querySelector(".empty"); if (empty) empty.remove();
      var li = document.createElement("li");
      var strong = document.createElement("strong"); strong.textContent = show(m.value);
      var meta = document.createElement("span"); meta.className = "muted";
      meta.textContent = " seq " + m.seq + " · ✓ signed by " + (m.signer || "").slice(0, 8) + "…";
      li.append(when(m.t) + " · ", strong, meta);
      ul.prepend(li);
      while (ul.children.length > 10) ul.lastElementChild.remove();
    });
  }

  function onAction(m) {
    each(sel("data-request", m.request), function (li) {
      li.querySelector(".state").textContent = m.state;
      li.dataset.state = m.state;
      li.querySelector(".progress").textContent = m.progress != null ? m.progress + " % " + (m.message || "") : (m.message || "");
      if (m.state === "done") li.querySelector(".result").textContent = "→ " + show(m.result);
    });
  }

  function onStatus(m) {
    each(sel("data-status", m.thing), function (el) { el.textContent = m.status; el.className = "badge " + m.status; });
    each(sel("data-online", m.thing), function (el) { el.textContent = m.online; el.className = "badge " + m.online; });
    each(sel("data-seen", m.thing), function (el) { el.textContent = when(m.last_seen); });
  }

  // a list re-renders at most once a second, however fast the store changes
  var pending = {};
  function refresh(id) {
    if (pending[id]) return;
    pending[id] = setTimeout(function () {
      delete pending[id];
      var el = document.getElementById(id);
      if (el && window.htmx) htmx.trigger(el, "refresh");
    }, 1000);
  }

  function open() {
    if (source || !keys()) return;
    source = new EventSource("/live?keys=" + encodeURIComponent(keys()));
    document.body.dataset.stream = "opening";
    function on(name, fn) { source.addEventListener(name, function (e) { fn(JSON.parse(e.data)); }); }
    // the server listens from here on; catch up on what changed while the stream was closed
    on("hello", function () {
      document.body.dataset.stream = "open";
      if (reopened) { refresh("things-rows"); refresh("devices-rows"); }
      reopened = true;
    });
    on("value", onValue);
    on("desired", onDesired);
    on("event", onEvent);
    on("action", onAction);
    on("status", onStatus);
    on("things", function () { refresh("things-rows"); });
    on("devices", function () { refresh("devices-rows"); });
  }

  function close() {
    if (source) { source.close(); source = null; document.body.dataset.stream = "closed"; }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") close(); else open();
  });
  window.addEventListener("pagehide", close);

  // --- charts ---------------------------------------------------------------------------
  function size(el) { return { width: Math.max(200, el.clientWidth), height: 200 }; }

  function chart(el, range) {
    var id = el.dataset.thing + "|" + el.dataset.attr;
    var url = "/things/" + encodeURIComponent(el.dataset.thing) + "/history/" +
      encodeURIComponent(el.dataset.attr) + "?range=" + range;
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (doc) {
      var old = charts[id]; if (old) old.plot.destroy();
      var data = [doc.t, doc.v];
      var unit = doc.unit || el.dataset.unit || "";
      var s = size(el);
      var opts = {
        width: s.width, height: s.height,
        scales: { x: { time: true, range: [doc.since, doc.until] } },
        axes: [{}, { label: unit, size: 50 }],
        series: [{}, { label: el.dataset.attr + (unit ? " (" + unit + ")" : ""), stroke: "#0b6bcb", width: 2, spanGaps: false, points: { show: true, size: 4 } }]
      };
      var plot = new uPlot(opts, data, el);
      var last = doc.t.length ? doc.t[doc.t.length - 1] : 0;
      charts[id] = { plot: plot, data: data, range: range, el: el, lastT: last };
      el.dataset.points = String(doc.t.length);
      el.dataset.ready = "1";
    });
  }

  function charts_init() {
    each(".chart", function (el) {
      chart(el, "hour");
      var tools = el.previousElementSibling;
      if (tools) tools.querySelectorAll("button.range").forEach(function (b) {
        b.addEventListener("click", function () {
          tools.querySelectorAll("button.range").forEach(function (x) { x.classList.remove("active"); });
          b.classList.add("active");
          chart(el, b.dataset.range);
        });
      });
    });
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (k) { var c = charts[k]; c.plot.setSize(size(c.el)); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    charts_init();
    if (document.visibilityState !== "hidden") open();
  });
})();
