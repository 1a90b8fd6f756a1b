// rollwise dashboard: buttons that post to the API (with the session's CSRF token), local
// times, and the live canary view (polls /api/v1/environments/ENV/live about once a second).
// No library, nothing from another origin.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : null;
  const flash = document.getElementById("flash");

  function say(text, kind) {
    if (!flash) return;
    flash.hidden = false;
    flash.className = kind || "";
    flash.textContent = text;
  }

  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (csrf) headers["X-CSRF-Token"] = csrf;
    const r = await fetch(url, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = null;
    try {
      data = await r.json();
    } catch (e) {
      data = { error: r.status + " " + r.statusText };
    }
    return { status: r.status, data: data };
  }

  function problem(data) {
    let text = data.error || "failed";
    if (data.where) text += " (" + data.where + ")";
    if (data.hint) text += "; " + data.hint;
    return text;
  }

  // A job (deploy, rollback) runs on the server: follow it until it ends.
  async function follow(job, then) {
    say(job.kind + " of " + job.env + " running (job " + job.id + ")…", "busy");
    for (;;) {
      await new Promise((ok) => setTimeout(ok, 500));
      const r = await api("GET", "/api/v1/jobs/" + encodeURIComponent(job.id));
      if (r.status !== 200) return say(problem(r.data), "error");
      if (r.data.state === "done") {
        const res = r.data.result || {};
        say(res.ok ? res.message : problem(res), res.ok ? "ok" : "error");
        if (then) {
          const dep = res.deployment;
          window.location.href = dep ? then + "/deployments/" + dep : then;
        }
        return;
      }
    }
  }

  async function post(el, url, body) {
    if (el.dataset.confirm && !window.confirm(el.dataset.confirm)) return;
    if (el.dataset.askReason) {
      const reason = window.prompt(el.dataset.askReason);
      if (reason === null) return;
      body = Object.assign({}, body, { reason: reason || null });
    }
    el.disabled = true;
    say("sending…", "busy");
    try {
      const r = await api("POST", url, body);
      if (r.status >= 400) return say(problem(r.data), "error");
      const d = r.data;
      if (d.kind && d.id && d.state) return follow(d, el.dataset.follow);
      if (d.approval) {
        const a = d.approval;
        say("approval request " + a.id + " for " + a.version + " to " + a.env + ": " + a.state, "ok");
        if (d.job) return follow(d.job, null);
        return;
      }
      say(d.message || "done", "ok");
    } catch (e) {
      say(String(e), "error");
    } finally {
      el.disabled = false;
    }
  }

  document.addEventListener("click", (ev) => {
    const el = ev.target.closest("[data-post]");
    if (!el) return;
    ev.preventDefault();
    post(el, el.dataset.post, JSON.parse(el.dataset.body || "{}"));
  });

  document.addEventListener("submit", (ev) => {
    const form = ev.target.closest("[data-post-form]");
    if (!form) return;
    ev.preventDefault();
    const body = Object.fromEntries(new FormData(form).entries());
    post(form, form.dataset.postForm, body);
  });

  // Times: shown in the viewer's zone, UTC in the tooltip.
  const pad = (n) => String(n).padStart(2, "0");
  function local(d) {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    return (
      d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + " (" + zone + ")"
    );
  }
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((t) => {
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      if (!t.title) t.title = t.textContent;
      t.textContent = local(d);
    });
  }
  localTimes(document);

  // --- the live view ---------------------------------------------------------------------
  const box = document.getElementById("live");
  if (!box) return;
  const COLORS = ["#c0392b", "#2471a3", "#7d3c98", "#1e8449", "#b9770e"];
  const WINDOW_S = 120;
  const MIN_SPAN_S = 20;
  const POLL_RUNNING_MS = 500;
  const POLL_IDLE_MS = 1000;
  const series = { errors: {}, latency: {} }; // version -> [[t, value]]
  const colors = {};
  let prev = null;
  let lastDecisionAt = null;

  function color(v) {
    if (!colors[v]) colors[v] = COLORS[Object.keys(colors).length % COLORS.length];
    return colors[v];
  }

  // p99 of the requests between two readings of a cumulative histogram
  function p99(now, before) {
    const counts = now.bucket_counts.map((c, i) => c - ((before && before.bucket_counts[i]) || 0));
    const total = counts.reduce((a, b) => a + b, 0);
    if (!total) return null;
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      seen += counts[i];
      if (seen >= 0.99 * total) {
        const b = now.buckets_ms[i];
        return b === "inf" ? null : Number(b);
      }
    }
    return null;
  }

  function push(kind, version, t, value) {
    if (value === null || value === undefined) return;
    const s = (series[kind][version] = series[kind][version] || []);
    s.push([t, value]);
    while (s.length && s[0][0] < t - WINDOW_S) s.shift();
  }

  function draw(svg, kind, unit) {
    const W = 600, H = 200, L = 44, B = 18;
    const all = Object.values(series[kind]).flat();
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const ns = "http://www.w3.org/2000/svg";
    const el = (name, attrs, text) => {
      const e = document.createElementNS(ns, name);
      for (const k in attrs) e.setAttribute(k, attrs[k]);
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    el("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" });
    el("line", { x1: L, y1: 0, x2: L, y2: H - B, class: "axis" });
    if (!all.length) {
      el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "waiting for traffic");
      return;
    }
    // the last WINDOW_S seconds, or since the first point (at least MIN_SPAN_S)
    const t1 = Math.max(...all.map((p) => p[0]));
    const first = Math.min(...all.map((p) => p[0]));
    const span = Math.max(MIN_SPAN_S, Math.min(WINDOW_S, t1 - first));
    const t0 = t1 - span;
    const top = Math.max(kind === "errors" ? 1 : 10, ...all.map((p) => p[1])) * 1.1;
    const x = (t) => L + ((t - t0) / span) * (W - L);
    const y = (v) => H - B - (v / top) * (H - B - 4);
    el("text", { x: L - 4, y: 12, "text-anchor": "end", class: "tick" }, top.toFixed(top < 10 ? 1 : 0) + unit);
    el("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "tick" }, "0");
    el("text", { x: L, y: H - 2, class: "tick" }, "-" + Math.round(span) + " s");
    el("text", { x: W, y: H - 2, "text-anchor": "end", class: "tick" }, "now");
    let i = 0;
    for (const [version, pts] of Object.entries(series[kind])) {
      el("polyline", {
        points: pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" "),
        fill: "none", stroke: color(version), "stroke-width": 2, "data-version": version,
        "data-points": pts.length,
      });
      el("text", { x: L + 8 + 90 * i++, y: 14, fill: color(version), class: "legend" }, version);
    }
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function badge(text) {
    const td = document.createElement("td");
    const s = document.createElement("span");
    s.className = "badge badge-" + String(text).toLowerCase().replace(/[ _]/g, "-");
    s.textContent = text;
    td.appendChild(s);
    return td;
  }

  function fmtTime(ts) {
    return local(new Date(ts * 1000));
  }

  function show(now) {
    const summary = document.getElementById("summary");
    const run = now.in_progress;
    summary.textContent = run
      ? run.kind + " to " + run.to + " in progress (deployment #" + run.id + ")"
      : (now.live_version || "nothing") + " live; nothing in progress";
    const controls = document.getElementById("controls");
    if (controls) controls.hidden = !run;

    const look = now.look;
    const last = now.decisions.length ? now.decisions[now.decisions.length - 1] : null;
    // a recorded decision newer than the last look wins: it ends the step
    let shown = null;
    if (look && look.decision && (!last || look.ts >= last.at)) shown = look.decision;
    else if (last) shown = { action: last.decision, reason: last.reason };
    const dec = document.getElementById("decision");
    dec.dataset.action = shown ? shown.action : "";
    if (last) dec.dataset.recorded = last.decision + "@" + last.at;
    document.getElementById("decision-action").textContent = shown ? shown.action : "none yet";
    document.getElementById("decision-reason").textContent = shown ? shown.reason : "";
    document.getElementById("step").textContent = look && run
      ? "step " + look.step + ", " + look.elapsed_s + " s" + (look.pause_s ? " of " + look.pause_s + " s" : "") +
        (look.percent !== null && look.percent !== undefined ? ", " + look.percent + "% to the new release" : "")
      : "";

    const body = document.querySelector("#versions tbody");
    body.replaceChildren();
    for (const [v, c] of Object.entries(now.versions)) {
      const tr = document.createElement("tr");
      tr.dataset.version = v;
      const td = cell(v);
      td.className = "version";
      td.style.color = color(v);
      tr.append(td, cell((now.shares[v] || 0) + "%"), cell(c.requests), cell(c.errors),
        cell(c.requests ? ((100 * c.errors) / c.requests).toFixed(2) + "%" : "-"),
        cell(c.p50_ms ?? "-"), cell(c.p99_ms ?? "-"));
      body.appendChild(tr);
    }
    if (!Object.keys(now.versions).length) {
      const tr = document.createElement("tr");
      const td = cell(now.router_error || "No traffic counted yet.");
      td.colSpan = 7;
      tr.appendChild(td);
      body.appendChild(tr);
    }

    if (prev) {
      for (const [v, c] of Object.entries(now.versions)) {
        const b = prev.versions[v] ? prev.versions[v].raw : null;
        const n = c.raw.requests - (b ? b.requests : 0);
        const bad = c.raw.errors - (b ? b.errors : 0);
        if (n > 0 && n >= 0) {
          push("errors", v, now.at, (100 * bad) / n);
          push("latency", v, now.at, p99(c.raw, b));
        }
      }
    }
    prev = now;
    draw(document.getElementById("chart-errors"), "errors", "%");
    draw(document.getElementById("chart-latency"), "latency", "");

    const key = last ? last.at + ":" + now.decisions.length : null;
    if (key !== lastDecisionAt) {
      lastDecisionAt = key;
      const tb = document.querySelector("#decisions tbody");
      tb.replaceChildren();
      for (const d of now.decisions.slice().reverse()) {
        const tr = document.createElement("tr");
        tr.append(cell(fmtTime(d.at)), cell(d.step), badge(d.decision), cell(d.reason));
        tb.appendChild(tr);
      }
      if (!now.decisions.length) {
        const tr = document.createElement("tr");
        const td = cell("None yet.");
        td.colSpan = 4;
        tr.appendChild(td);
        tb.appendChild(tr);
      }
    }
    const dep = now.deployment;
    const p = document.getElementById("deployment");
    if (dep) {
      p.replaceChildren("Deployment ");
      const a = document.createElement("a");
      a.href = "/environments/" + encodeURIComponent(now.env) + "/deployments/" + dep.id;
      a.textContent = "#" + dep.id + " " + dep.kind + " " + dep.to_version;
      const s = document.createElement("span");
      s.className = "badge badge-" + dep.status.replace(/_/g, "-");
      s.textContent = dep.status;
      p.append(a, " ", s);
    }
  }

  let running = false;
  async function tick() {
    try {
      const r = await api("GET", box.dataset.url);
      if (r.status === 200) {
        show(r.data);
        running = Boolean(r.data.in_progress);
        box.dataset.updated = String(r.data.at);
      } else say(problem(r.data), "error");
    } catch (e) {
      say("lost the server: " + e, "error");
    }
    // twice a second while a deployment runs (a decision shows within ~0.5 s), else once
    setTimeout(tick, running ? POLL_RUNNING_MS : POLL_IDLE_MS);
  }
  tick();
})();
