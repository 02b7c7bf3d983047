/* CareCast web UI: the idle-logoff warning and live updates over Server-Sent Events. No library. */
(function () {
  "use strict";
  var body = document.body;
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var FRAGMENT = "application/x-carecast-fragment";

  function signOut(reason) {
    var form = document.getElementById("logout-form");
    if (!form) { window.location.reload(); return; }
    form.elements.reason.value = reason || "";
    form.submit();
  }

  /* -- idle logoff: the server ends the session anyway; this warns first and leaves the page cleanly -- */
  function setUpIdle() {
    var idle = parseFloat(body.dataset.idleSeconds || "0");
    if (!idle) { return; }
    var warn = parseFloat(body.dataset.warnSeconds || "60");
    var dialog = document.getElementById("idle-warning");
    var countdown = document.getElementById("idle-countdown");
    var timer = null, ticker = null, endsAt = 0;

    function schedule(remaining) {
      clearTimeout(timer);
      endsAt = Date.now() + remaining * 1000;
      timer = setTimeout(check, Math.max(0, remaining - warn) * 1000);
    }
    function showWarning(remaining) {
      endsAt = Date.now() + remaining * 1000;
      if (dialog && !dialog.open) {
        if (dialog.showModal) { dialog.showModal(); } else { dialog.setAttribute("open", ""); }
        var stay = document.getElementById("idle-stay");
        if (stay) { stay.focus(); }
      }
      clearInterval(ticker);
      ticker = setInterval(tick, 1000);
      tick();
    }
    function tick() {
      var left = Math.max(0, Math.round((endsAt - Date.now()) / 1000));
      if (countdown) {
        countdown.textContent = left >= 60 ? Math.ceil(left / 60) + " minute" + (left > 60 ? "s" : "") : left + " seconds";
      }
      if (left <= 0) { clearInterval(ticker); check(true); }
    }
    function expire(remaining) {
      /* the server ends the session itself when its idle time is up; the sign-in page then says why */
      clearInterval(ticker);
      setTimeout(function () { window.location.assign(body.dataset.loginUrl + "?reason=idle"); },
                 Math.max(0, remaining) * 1000 + 500);
    }
    function check(final) {
      fetch(body.dataset.statusUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
        .then(function (r) { return r.ok ? r.json() : {remaining: 0}; })
        .then(function (data) {
          var remaining = data.remaining || 0;
          if (remaining <= 1) { expire(remaining); return; }
          if (remaining > warn + 2) {  /* active in another tab: start again */
            if (dialog && dialog.open) { dialog.close(); }
            clearInterval(ticker);
            schedule(remaining);
          } else if (!final) {
            showWarning(remaining);
          } else {
            expire(remaining);
          }
        })
        .catch(function () { if (final) { expire(0); } else { showWarning(warn); } });
    }
    function stay() {
      fetch(body.dataset.keepaliveUrl, {method: "POST", credentials: "same-origin",
                                        headers: {"X-CSRF-Token": csrf, Accept: "application/json"}})
        .then(function (r) { return r.ok ? r.json() : {remaining: 0}; })
        .then(function (data) {
          if (!data.remaining) { expire(0); return; }
          clearInterval(ticker);
          if (dialog && dialog.open) { dialog.close(); }
          schedule(data.remaining);
        });
    }
    var stayButton = document.getElementById("idle-stay");
    var leaveButton = document.getElementById("idle-leave");
    if (stayButton) { stayButton.addEventListener("click", stay); }
    if (leaveButton) { leaveButton.addEventListener("click", function () { signOut(""); }); }
    if (dialog) { dialog.addEventListener("cancel", function (e) { e.preventDefault(); stay(); }); }
    schedule(idle);
  }

  /* -- live updates -------------------------------------------------------------------------------- */
  function pct(risk) { return Math.round(risk * 100) + "%"; }

  function setStatus(text, on) {
    var el = document.getElementById("live-status");
    if (el) { el.textContent = text; el.classList.toggle("on", !!on); }
  }

  function makeRefresher(url, target, minGapMs) {
    var last = 0, pending = null;
    function run() {
      pending = null;
      last = Date.now();
      fetch(url, {credentials: "same-origin", headers: {Accept: FRAGMENT}})
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null && html !== undefined) { target.innerHTML = html; } })
        .catch(function () { /* the next event tries again */ });
    }
    return function () {
      if (pending) { return; }
      var wait = Math.max(800, minGapMs - (Date.now() - last));
      pending = setTimeout(run, wait);
    };
  }

  function sortWard(tbody) {
    var rows = Array.prototype.slice.call(tbody.querySelectorAll("tr[data-uid]"));
    rows.sort(function (a, b) {
      var d = parseFloat(b.dataset.risk) - parseFloat(a.dataset.risk);
      return d !== 0 ? d : (a.dataset.uid < b.dataset.uid ? -1 : 1);
    });
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  function onWardEvent(data, refresh) {
    var tbody = document.getElementById("ward-rows");
    if (!tbody) { return; }
    var row = tbody.querySelector('tr[data-uid="' + CSS.escape(data.patient_uid) + '"]');
    if (!row) { refresh(); return; }  /* a patient new to this list */
    if (data.task !== body.dataset.sortTask) { refresh(); return; }
    var risk = row.querySelector('[data-field="risk"]');
    if (risk) { risk.textContent = pct(data.risk); risk.className = "band band-" + data.band; }
    var band = row.querySelector('[data-field="band"]');
    if (band) { band.textContent = data.band; }
    var news2 = row.querySelector('[data-field="news2"]');
    if (news2 && data.news2 !== null && data.news2 !== undefined) { news2.textContent = data.news2; }
    row.dataset.risk = String(data.risk);
    row.classList.remove("updated");
    void row.offsetWidth;  /* restart the highlight */
    row.classList.add("updated");
    sortWard(tbody);
    refresh();  /* sparkline, alerts and last-vitals time follow shortly */
  }

  function onPatientEvent(data, refresh) {
    if (data.patient_uid !== body.dataset.uid) { return; }
    var task = document.querySelector('#risk-panel article[data-task="' + CSS.escape(data.task) + '"]');
    if (task) {
      var risk = task.querySelector('[data-field="risk"]');
      if (risk) { risk.textContent = pct(data.risk); risk.className = "band band-" + data.band + " big"; }
      var band = task.querySelector('[data-field="band"]');
      if (band) { band.textContent = data.band; }
    }
    refresh();
  }

  function setUpLive() {
    var url = body.dataset.streamUrl;
    if (!url || !window.EventSource) { return; }
    var page = body.dataset.page;
    var target = document.getElementById(page === "ward" ? "ward-rows" : "risk-panel");
    var refresh = makeRefresher(body.dataset.refreshUrl, target, page === "ward" ? 10000 : 3000);
    var source = null;
    function connect() {
      source = new EventSource(url);
      source.addEventListener("open", function () { setStatus("Live", true); });
      source.addEventListener("risk-updated", function (e) {
        var data;
        try { data = JSON.parse(e.data); } catch (err) { return; }
        if (page === "ward") { onWardEvent(data, refresh); } else { onPatientEvent(data, refresh); }
      });
      source.addEventListener("resync", function () { refresh(); });
      source.addEventListener("error", function () {
        if (source.readyState === EventSource.CLOSED) {
          setStatus("Live updates paused", false);
          fetch(body.dataset.statusUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
            .then(function (r) {
              if (r.status === 401) { window.location.reload(); return; }
              setTimeout(connect, 5000);
            })
            .catch(function () { setTimeout(connect, 5000); });
        } else {
          setStatus("Reconnecting…", false);
        }
      });
    }
    connect();
    window.addEventListener("pagehide", function () { if (source) { source.close(); } });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpIdle();
    setUpLive();
  });
})();
