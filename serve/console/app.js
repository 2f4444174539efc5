/*
 * The flashlora web console's script: talks to the /v1 API of this origin with the key its user
 * entered (kept in this tab's sessionStorage, sent as "Authorization: Bearer"; never in a URL).
 * Panels: New adapter (an image set checked by POST /v1/datasets/validate, then POST
 * /v1/trainings), Training (the job's event stream read with fetch, since EventSource cannot send
 * the key; the loss curve drawn on a canvas as events arrive), Adapters (list, delete, download
 * in a layout, import), Playground (synchronous generations, with and without adapters) and
 * Evaluation (POST /v1/evaluations, its scores and report). Everything shown comes from answers
 * to this key: another tenant's things are never asked for, and a new key clears the page.
 */
"use strict";

(function () {
  const KEY_STORE = "flashlora.key";
  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    adapters: [],
    archive: null,       // {blob, name}: what the next training uploads
    thumbs: new Map(),   // file name in the set -> object URL
    follow: null,        // AbortController of the followed job's stream
    jobId: null,
    losses: [],
    epoch: 0,            // bumped when the key changes: answers to an older key are dropped
  };

  // A check for answers that arrive after the key changed (they belong to another tenant's view).
  function current() {
    const epoch = state.epoch;
    return () => epoch === state.epoch;
  }

  /* ---- small helpers ------------------------------------------------------------------------ */

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function show(node, text, kind) {
    node.textContent = text || "";
    node.hidden = !text;
    if (kind) node.className = "banner " + kind;
  }

  function bytes(n) {
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
    return n + " B";
  }

  function duration(s) {
    if (!(s >= 0) || !isFinite(s)) return "–";
    s = Math.round(s);
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    return m < 60 ? m + " min " + (s % 60) + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function when(ms) {
    return ms ? new Date(ms).toLocaleString() : "–";
  }

  /* ---- the API ------------------------------------------------------------------------------ */

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // One request with the key; JSON answers parsed. raw: the Response itself (streams, files).
  async function api(path, opts = {}) {
    if (!state.key) throw new ApiError(401, "no_key", "Enter an API key first.");
    const headers = new Headers(opts.headers || {});
    headers.set("Authorization", "Bearer " + state.key);
    let body = opts.body;
    if (opts.json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(opts.json);
    }
    let res;
    try {
      res = await fetch(path, { method: opts.method || "GET", headers, body, signal: opts.signal, cache: "no-store" });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "The service cannot be reached (" + e.message + ").");
    }
    if (!res.ok) {
      let code = "http_" + res.status, message = res.status + " " + res.statusText;
      try {
        const j = await res.json();
        if (j && j.error) ({ code, message } = j.error);
      } catch (e) { /* not JSON */ }
      if (res.status === 401) keyRefused(message);
      throw new ApiError(res.status, code, message);
    }
    if (opts.raw) return res;
    return res.status === 204 ? null : res.json();
  }

  function errorText(e) {
    if (e instanceof ApiError) return e.status ? e.message + " (" + e.status + " " + e.code + ")" : e.message;
    return String(e && e.message ? e.message : e);
  }

  /* ---- the key ------------------------------------------------------------------------------- */

  function keyRefused(message) {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    clearTenantView();
    show($("key-message"), "This API key was refused: " + (message || "unknown key") +
      ". Check it, or ask for one (flashlora keys create --tenant NAME).", "error");
    $("key-status").textContent = "No key in use.";
    $("key-input").focus();
    $("key-input").select();
  }

  // Everything shown belongs to one key's tenant: a new key (or none) starts from nothing.
  function clearTenantView() {
    state.epoch++;
    stopFollowing();
    state.adapters = [];
    state.jobId = null;
    clearSet();
    $("adapters-body").replaceChildren();
    $("adapters-count").textContent = "";
    $("gen-results").replaceChildren();
    $("eval-body").replaceChildren();
    $("eval-report").hidden = true;
    $("job-view").hidden = true;
    $("job-select").replaceChildren(el("option", { value: "", text: "No training yet" }));
    renderAdapterPickers();
  }

  async function useKey(key) {
    clearTenantView();
    state.key = key;
    try {
      await api("/v1/adapters?limit=1"); // a 401 here is a refused key
      sessionStorage.setItem(KEY_STORE, key);
      show($("key-message"), "");
      $("key-status").textContent = "Key accepted: it is kept in this tab until you forget it or close the tab.";
      $("key-input").value = "";
      $("key-input").placeholder = "key in use (enter another to switch)";
      await Promise.all([loadAdapters(), loadJobs(true)]);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) {
        state.key = null;
        show($("key-message"), "The key could not be checked: " + errorText(e), "error");
      }
    }
  }

  function needKey(node) {
    if (state.key) return true;
    show(node, "Enter an API key first (top of the page).", "error");
    $("key-input").focus();
    return false;
  }

  /* ---- tabs ---------------------------------------------------------------------------------- */

  const tabs = () => Array.from(document.querySelectorAll('[role="tab"]'));

  function selectTab(tab, focus) {
    for (const t of tabs()) {
      const on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    if (tab.id === "tab-adapters" && state.key) loadAdapters();
    if (tab.id === "tab-training" && state.key) loadJobs(false);
  }

  function setupTabs() {
    for (const t of tabs()) {
      t.addEventListener("click", () => selectTab(t, false));
      t.addEventListener("keydown", (ev) => {
        const all = tabs(), i = all.indexOf(t);
        let next = null;
        if (ev.key === "ArrowRight") next = all[(i + 1) % all.length];
        else if (ev.key === "ArrowLeft") next = all[(i - 1 + all.length) % all.length];
        else if (ev.key === "Home") next = all[0];
        else if (ev.key === "End") next = all[all.length - 1];
        if (next) {
          ev.preventDefault();
          selectTab(next, true);
        }
      });
    }
  }

  /* ---- zip archives: written for a dropped folder, read for thumbnails ------------------------ */

  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(data) {
    let c = 0xffffffff;
    for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  // A zip (stored, UTF-8 names) of [{name, data: Uint8Array}].
  function makeZip(files) {
    const enc = new TextEncoder(), parts = [], central = [];
    let offset = 0;
    for (const f of files) {
      const name = enc.encode(f.name), crc = crc32(f.data), size = f.data.length;
      const local = new DataView(new ArrayBuffer(30));
      local.setUint32(0, 0x04034b50, true);
      local.setUint16(4, 20, true);
      local.setUint16(6, 0x0800, true); // UTF-8 names
      local.setUint32(14, crc, true);
      local.setUint32(18, size, true);
      local.setUint32(22, size, true);
      local.setUint16(26, name.length, true);
      parts.push(local, name, f.data);
      const cd = new DataView(new ArrayBuffer(46));
      cd.setUint32(0, 0x02014b50, true);
      cd.setUint16(4, 20, true);
      cd.setUint16(6, 20, true);
      cd.setUint16(8, 0x0800, true);
      cd.setUint32(16, crc, true);
      cd.setUint32(20, size, true);
      cd.setUint32(24, size, true);
      cd.setUint16(28, name.length, true);
      cd.setUint32(42, offset, true);
      central.push(cd, name);
      offset += 30 + name.length + size;
    }
    const cdSize = central.reduce((n, p) => n + p.byteLength, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, files.length, true);
    end.setUint16(10, files.length, true);
    end.setUint32(12, cdSize, true);
    end.setUint32(16, offset, true);
    return new Blob([...parts, ...central, end], { type: "application/zip" });
  }

  const IMAGE_TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", bmp: "image/bmp",
                        webp: "image/webp" };
  const imageType = (name) => IMAGE_TYPES[(name.split(".").pop() || "").toLowerCase()];

  // The images of a zip as {name: Blob} (for thumbnails only: the service judges the set).
  async function zipImages(blob) {
    const out = new Map();
    const buf = new Uint8Array(await blob.arrayBuffer());
    const dv = new DataView(buf.buffer);
    let eocd = -1;
    for (let i = buf.length - 22; i >= Math.max(0, buf.length - 65557); i--)
      if (dv.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
    if (eocd < 0) return out;
    const count = dv.getUint16(eocd + 10, true);
    let p = dv.getUint32(eocd + 16, true);
    const dec = new TextDecoder();
    for (let n = 0; n < count && n < 300 && p + 46 <= buf.length; n++) {
      if (dv.getUint32(p, true) !== 0x02014b50) break;
      const method = dv.getUint16(p + 10, true), csize = dv.getUint32(p + 20, true);
      const nlen = dv.getUint16(p + 28, true), xlen = dv.getUint16(p + 30, true), clen = dv.getUint16(p + 32, true);
      const local = dv.getUint32(p + 42, true);
      const name = dec.decode(buf.subarray(p + 46, p + 46 + nlen));
      p += 46 + nlen + xlen + clen;
      const type = imageType(name);
      if (!type || name.endsWith("/") || csize > 25 << 20 || local + 30 > buf.length) continue;
      const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
      const data = buf.subarray(start, Math.min(buf.length, start + csize));
      try {
        if (method === 0) out.set(name, new Blob([data], { type }));
        else if (method === 8 && "DecompressionStream" in window) {
          const s = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
          out.set(name, new Blob([await new Response(s).arrayBuffer()], { type }));
        }
      } catch (e) { /* no thumbnail for this one */ }
    }
    return out;
  }

  /* ---- New adapter ---------------------------------------------------------------------------- */

  function clearSet() {
    for (const url of state.thumbs.values()) URL.revokeObjectURL(url);
    state.thumbs.clear();
    state.archive = null;
    $("set-result").hidden = true;
    $("set-images").replaceChildren();
    $("set-rejected").replaceChildren();
    $("set-status").textContent = "";
    $("train-submit").disabled = true;
  }

  // Files from a drop: folders walked (webkitGetAsEntry), each file with its relative path.
  async function droppedFiles(dt) {
    const items = Array.from(dt.items || []).map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (!items.length) return Array.from(dt.files || []).map((f) => ({ file: f, path: f.name }));
    const out = [];
    async function walk(entry, prefix) {
      if (out.length > 2000) return;
      if (entry.isFile) {
        const file = await new Promise((ok, bad) => entry.file(ok, bad));
        out.push({ file, path: prefix + entry.name });
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((ok, bad) => reader.readEntries(ok, bad));
          if (!batch.length) break;
          for (const e of batch) await walk(e, prefix + entry.name + "/");
        }
      }
    }
    for (const e of items) await walk(e, "");
    return out;
  }

  const isArchive = (name) => /\.(zip|tar|tgz|tar\.gz|gz)$/i.test(name);

  // One archive as it is, or loose files (a folder, several images) zipped here.
  async function takeFiles(list) {
    clearSet();
    if (!needKey($("train-error"))) return;
    show($("train-error"), "");
    if (!list.length) return;
    let blob, name;
    if (list.length === 1 && isArchive(list[0].path)) {
      blob = list[0].file;
      name = list[0].file.name;
      if (/\.zip$/i.test(name)) {
        for (const [n, b] of await zipImages(blob)) state.thumbs.set(n, URL.createObjectURL(b));
      }
    } else {
      // a common top folder is left out, as the service would see the folder's contents
      const paths = list.map((f) => f.path);
      const top = paths[0].includes("/") ? paths[0].split("/")[0] + "/" : "";
      const strip = top && paths.every((p) => p.startsWith(top)) ? top.length : 0;
      const files = [];
      for (const f of list) {
        const rel = f.path.slice(strip);
        files.push({ name: rel, data: new Uint8Array(await f.file.arrayBuffer()) });
        if (imageType(rel)) state.thumbs.set(rel, URL.createObjectURL(f.file));
      }
      blob = makeZip(files);
      name = "images.zip";
    }
    state.archive = { blob, name };
    await validateSet();
  }

  async function validateSet() {
    const still = current();
    const status = $("set-status");
    status.textContent = "Checking " + state.archive.name + " (" + bytes(state.archive.blob.size) + ")…";
    const form = new FormData();
    form.append("images", state.archive.blob, state.archive.name);
    let report;
    try {
      report = await api("/v1/datasets/validate", { method: "POST", body: form });
    } catch (e) {
      if (!still()) return;
      status.textContent = "";
      show($("train-error"), "The image set cannot be used: " + errorText(e), "error");
      return;
    }
    if (!still()) return;
    const imgs = $("set-images"), rej = $("set-rejected");
    for (const im of report.images) {
      const url = state.thumbs.get(im.name);
      imgs.append(el("li", {},
        url ? el("img", { src: url, alt: im.name }) : el("div", { class: "noimg" }),
        el("span", { class: "name", title: im.name, text: im.name }),
        el("span", { class: "muted", text: im.width + "×" + im.height })));
    }
    for (const r of report.rejected) {
      rej.append(el("li", { dataset: { name: r.name } },
        el("span", { class: "noimg", "aria-hidden": "true", text: "✕" }),
        el("div", {}, el("div", { class: "file", text: r.name }), el("div", { class: "reason", text: r.reason }))));
    }
    $("set-rejected-box").hidden = report.rejected.length === 0;
    $("set-result").hidden = false;
    const n = report.images.length, k = report.rejected.length;
    const summary = n + " usable image" + (n === 1 ? "" : "s") + (k ? ", " + k + " rejected file" + (k === 1 ? "" : "s") : "");
    if (report.usable) {
      status.textContent = summary + ": ready to train.";
      $("train-submit").disabled = false;
    } else {
      status.textContent = summary + ".";
      show($("train-error"), "This set cannot be trained: " + report.error.message, "error");
    }
  }

  function setupNewAdapter() {
    const drop = $("drop");
    // a file dropped beside the drop zone must not make the browser leave the page to open it
    for (const t of ["dragover", "drop"])
      document.addEventListener(t, (ev) => { if (!drop.contains(ev.target)) ev.preventDefault(); });
    for (const t of ["dragenter", "dragover"])
      drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
    drop.addEventListener("drop", async (ev) => {
      ev.preventDefault();
      takeFiles(await droppedFiles(ev.dataTransfer));
    });
    drop.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("pick-files").click(); }
    });
    $("pick-files").addEventListener("change", (ev) => {
      takeFiles(Array.from(ev.target.files).map((f) => ({ file: f, path: f.name })));
      ev.target.value = "";
    });
    $("pick-folder").addEventListener("change", (ev) => {
      takeFiles(Array.from(ev.target.files).map((f) => ({ file: f, path: f.webkitRelativePath || f.name })));
      ev.target.value = "";
    });
    $("train-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!needKey($("train-error")) || !state.archive) return;
      const form = new FormData();
      form.append("trigger_word", $("train-trigger").value.trim());
      if ($("train-name").value.trim()) form.append("name", $("train-name").value.trim());
      form.append("steps", $("train-steps").value);
      form.append("rank", $("train-rank").value);
      if ($("train-resolution").value) form.append("resolution", $("train-resolution").value);
      if ($("train-previews").checked) { /* four rounds: at each quarter of the run (the last at the end) */
        form.append("preview_every", String(Math.max(1, Math.ceil(Number($("train-steps").value) / 4))));
        form.append("preview_count", "2");
      }
      form.append("images", state.archive.blob, state.archive.name);
      $("train-submit").disabled = true;
      try {
        const job = await api("/v1/trainings", { method: "POST", body: form });
        show($("train-error"), "");
        clearSet();
        await loadJobs(false);
        $("job-select").value = job.job_id;
        selectTab($("tab-training"), true);
        followJob(job.job_id);
      } catch (e) {
        $("train-submit").disabled = false;
        show($("train-error"), "The training was not started: " + errorText(e), "error");
      }
    });
  }

  /* ---- Training ------------------------------------------------------------------------------ */

  async function loadJobs(followLatest) {
    const still = current();
    let page;
    try {
      page = await api("/v1/jobs?kind=train&limit=50");
    } catch (e) {
      return;
    }
    if (!still()) return;
    const sel = $("job-select"), keep = sel.value || state.jobId;
    const trainings = page.jobs;
    sel.replaceChildren();
    if (!trainings.length) sel.append(el("option", { value: "", text: "No training yet" }));
    for (const j of trainings) {
      const r = j.request || {};
      sel.append(el("option", { value: j.id, text: (r.name || r.trigger_word || j.id) + " — " + j.state + " — " +
        new Date(j.created_ms).toLocaleString() }));
    }
    if (keep && trainings.some((j) => j.id === keep)) sel.value = keep;
    if (followLatest && trainings.length && !state.jobId) followJob(trainings[0].id);
  }

  function stopFollowing() {
    if (state.follow) state.follow.abort();
    state.follow = null;
  }

  // Reads a server-sent event stream with fetch (the key goes in a header, never in the URL).
  async function readEvents(path, signal, onEvent) {
    const res = await api(path, { raw: true, signal });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let type = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          let v = c < 0 ? "" : line.slice(c + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "event") type = v;
          else if (field === "data") data.push(v);
        }
        if (!data.length) continue;
        let parsed;
        try { parsed = JSON.parse(data.join("\n")); } catch (e) { continue; }
        onEvent(type, parsed);
      }
    }
  }

  function drawLoss() {
    const canvas = $("loss-chart"), pts = state.losses;
    const ratio = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 720, cssH = canvas.clientHeight || 260;
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    canvas.dataset.points = String(pts.length);
    canvas.setAttribute("aria-label", pts.length
      ? "Training loss by step: " + pts.length + " steps drawn, the last " + pts[pts.length - 1][1].toFixed(4)
      : "Training loss by step: no step yet");
    const L = 52, R = 12, T = 12, B = 28, w = cssW - L - R, h = cssH - T - B;
    g.strokeStyle = "#d5dbe2";
    g.fillStyle = "#5b6673";
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    g.strokeRect(L, T, w, h);
    if (!pts.length) {
      g.fillText("waiting for the first step…", L + 10, T + 20);
      return;
    }
    const total = Math.max(state.total || 0, pts[pts.length - 1][0], 1);
    let lo = Infinity, hi = -Infinity;
    for (const [, l] of pts) { lo = Math.min(lo, l); hi = Math.max(hi, l); }
    if (hi - lo < 1e-9) { hi += 0.5; lo = Math.max(0, lo - 0.5); }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const x = (s) => L + (s / total) * w, y = (l) => T + (1 - (l - lo) / (hi - lo)) * h;
    g.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4, yy = y(v);
      g.beginPath(); g.moveTo(L, yy); g.lineTo(L + w, yy); g.stroke();
      g.fillText(v.toPrecision(3), L - 6, yy + 4);
    }
    g.textAlign = "center";
    for (let i = 0; i <= 4; i++) g.fillText(String(Math.round((total * i) / 4)), x((total * i) / 4), T + h + 16);
    // each step's loss (light), and its exponential moving average (dark), which shows the trend
    const line = (points, color, width) => {
      g.strokeStyle = color;
      g.lineWidth = width;
      g.beginPath();
      points.forEach(([s, l], i) => (i ? g.lineTo(x(s), y(l)) : g.moveTo(x(s), y(l))));
      g.stroke();
    };
    line(pts, "#9dbbe8", 1.25);
    let ema = pts[0][1];
    const beta = pts.length > 200 ? 0.95 : 0.8;
    line(pts.map(([s, l]) => [s, (ema = beta * ema + (1 - beta) * l)]), "#1f5fbf", 2.5);
    if (pts.length === 1) {
      g.fillStyle = "#1f5fbf";
      g.beginPath(); g.arc(x(pts[0][0]), y(pts[0][1]), 3, 0, 7); g.fill();
    }
  }

  function setJobState(s) {
    $("job-state").textContent = s;
    $("job-state").dataset.state = s;
    const over = s === "succeeded" || s === "failed" || s === "canceled";
    $("job-cancel").hidden = over;
  }

  async function followJob(id) {
    stopFollowing();
    state.jobId = id;
    $("job-view").dataset.job = id;
    state.losses = [];
    state.total = 0;
    state.result = null;
    $("job-view").hidden = false;
    $("job-previews").replaceChildren();
    $("job-try").hidden = true;
    show($("job-message"), "");
    $("job-step").textContent = $("job-loss").textContent = $("job-eta").textContent = "–";
    $("job-progress").value = 0;
    setJobState("…");
    drawLoss();
    const ctl = new AbortController();
    state.follow = ctl;
    const leftOut = [];
    const onEvent = (type, d) => {
      if (ctl.signal.aborted) return;
      if (type === "progress") {
        state.total = d.total || state.total;
        if (typeof d.loss === "number" && isFinite(d.loss)) state.losses.push([d.step, d.loss]);
        $("job-step").textContent = d.step + " / " + d.total;
        $("job-loss").textContent = typeof d.loss === "number" ? d.loss.toFixed(4) : "–";
        $("job-eta").textContent = duration(d.eta_s);
        $("job-progress").value = d.total ? d.step / d.total : 0;
        drawLoss();
      } else if (type === "queued" || type === "running" || type === "requeued") {
        setJobState(type === "requeued" ? "queued" : type);
      } else if (type === "cancel_requested") {
        show($("job-message"), "Cancel requested: the worker stops at its next step.", "");
      } else if (type === "rejected") {
        leftOut.push((d.name || "a file") + (d.reason ? " (" + d.reason + ")" : ""));
        show($("job-message"), "Left out of the training: " + leftOut.join("; "), "");
      } else if (type === "preview") {
        for (const im of d.images || []) if (im.id) addPreview(im.id, d.step);
      } else if (type === "succeeded") {
        setJobState("succeeded");
        state.result = d.result || null;
        $("job-progress").value = 1;
        $("job-eta").textContent = "done";
        const name = d.result && (d.result.name || d.result.adapter_id);
        show($("job-message"), "The adapter " + (name ? "“" + name + "” " : "") + "is ready.", "ok");
        $("job-try").hidden = false;
        loadAdapters();
        loadJobs(false);
      } else if (type === "failed" || type === "canceled" || type === "error") {
        setJobState(type === "error" ? "unknown" : type);
        loadJobs(false);
        const err = d.error || {};
        show($("job-message"), (type === "canceled" ? "Canceled" : "Failed") + (err.message ? ": " + err.message : "."),
          type === "canceled" ? "" : "error");
      }
    };
    try {
      const job = await api("/v1/jobs/" + encodeURIComponent(id), { signal: ctl.signal });
      setJobState(job.state);
      await readEvents("/v1/jobs/" + encodeURIComponent(id) + "/events", ctl.signal, onEvent);
    } catch (e) {
      if (e.name !== "AbortError" && state.follow === ctl) show($("job-message"), errorText(e), "error");
    }
  }

  async function addPreview(imageId, step) {
    /* placed at once, so the previews stay in the order of their events whatever order they load in */
    const img = el("img", { alt: "Preview at step " + step });
    const fig = el("figure", {}, img, el("figcaption", { text: "step " + step }));
    $("job-previews").append(fig);
    try {
      const res = await api("/v1/images/" + encodeURIComponent(imageId) + ".png", { raw: true });
      img.src = URL.createObjectURL(await res.blob());
    } catch (e) { fig.remove(); /* a preview that is gone is not worth a message */ }
  }

  function setupTraining() {
    $("job-select").addEventListener("change", (ev) => { if (ev.target.value) followJob(ev.target.value); });
    $("jobs-refresh").addEventListener("click", () => loadJobs(false));
    $("job-cancel").addEventListener("click", async () => {
      if (!state.jobId) return;
      try {
        const job = await api("/v1/jobs/" + encodeURIComponent(state.jobId) + "/cancel", { method: "POST" });
        show($("job-message"), job.state === "canceled" ? "Canceled." : "Cancel requested: the worker stops at its next step.", "");
      } catch (e) {
        show($("job-message"), "Could not cancel: " + errorText(e), "error");
      }
    });
    $("job-try").addEventListener("click", () => {
      const r = state.result || {};
      const a = state.adapters.find((x) => x.id === r.adapter_id || x.name === r.name);
      if (a) {
        const box = document.querySelector('#gen-adapters input[type="checkbox"][value="' + CSS.escape(a.id) + '"]');
        if (box) box.checked = true;
        $("gen-prompt").value = "a photo of " + a.trigger_word;
      }
      selectTab($("tab-playground"), true);
    });
    window.addEventListener("resize", () => { if (!$("job-view").hidden) drawLoss(); });
  }

  /* ---- Adapters ------------------------------------------------------------------------------- */

  async function loadAdapters() {
    if (!state.key) return;
    const still = current();
    const all = [];
    try {
      let offset = 0;
      for (let pages = 0; pages < 20 && offset !== null; pages++) {
        const page = await api("/v1/adapters?limit=500&offset=" + offset);
        all.push(...page.adapters);
        offset = page.next_offset;
      }
      show($("adapters-error"), "");
    } catch (e) {
      if (still()) show($("adapters-error"), "The adapters could not be listed: " + errorText(e), "error");
      return;
    }
    if (!still()) return;
    state.adapters = all;
    renderAdapters();
    renderAdapterPickers();
  }

  function cell(label, ...content) {
    return el("td", { "data-label": label }, ...content);
  }

  function renderAdapters() {
    const body = $("adapters-body");
    body.replaceChildren();
    $("adapters-count").textContent = state.adapters.length
      ? state.adapters.length + " adapter" + (state.adapters.length === 1 ? "" : "s")
      : "No adapters yet: train one (New adapter) or import a file below.";
    for (const a of state.adapters) {
      const meta = a.metadata || {};
      const loss = meta.final_loss !== undefined ? Number(meta.final_loss) : NaN;
      const layout = el("select", { id: "layout-" + a.id, "aria-label": "Layout of the download of " + a.name },
        el("option", { value: "canonical", text: "canonical" }), el("option", { value: "kohya", text: "kohya" }),
        el("option", { value: "peft", text: "PEFT (diffusers)" }));
      const download = el("button", { type: "button", "aria-label": "Download " + a.name, text: "Download" });
      download.addEventListener("click", () => downloadAdapter(a, layout.value, download));
      const del = el("button", { type: "button", class: "danger", "aria-label": "Delete " + a.name, text: "Delete" });
      del.addEventListener("click", () => deleteAdapter(a, del));
      body.append(el("tr", { dataset: { id: a.id, name: a.name } },
        cell("Name", el("strong", { text: a.name })),
        cell("Trigger", el("code", { text: a.trigger_word || "–" })),
        cell("Rank", String(a.rank)),
        cell("Base model", el("span", { class: "hash", title: a.base_model, text: (a.base_model || "").slice(0, 12) })),
        cell("Size", bytes(a.bytes)),
        cell("Created", when(a.created_ms)),
        cell("Training loss", isFinite(loss) ? loss.toFixed(4) : "–"),
        cell("Actions", el("div", { class: "actions" }, layout, download, del))));
    }
  }

  async function downloadAdapter(a, layout, button) {
    button.disabled = true;
    try {
      const res = await api("/v1/adapters/" + encodeURIComponent(a.id) + "/file?layout=" + layout, { raw: true });
      const blob = await res.blob();
      const m = /filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") || "");
      const link = el("a", { href: URL.createObjectURL(blob), download: m ? m[1] : a.id + ".safetensors" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      show($("adapters-error"), "");
    } catch (e) {
      show($("adapters-error"), "The download failed: " + errorText(e), "error");
    } finally {
      button.disabled = false;
    }
  }

  // Two presses: the first arms the button for a few seconds, the second deletes.
  async function deleteAdapter(a, button) {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = "Confirm delete";
      setTimeout(() => { button.classList.remove("armed"); button.textContent = "Delete"; }, 5000);
      return;
    }
    button.disabled = true;
    try {
      await api("/v1/adapters/" + encodeURIComponent(a.id), { method: "DELETE" });
      $("adapters-count").textContent = "Deleted " + a.name + ".";
      await loadAdapters();
    } catch (e) {
      button.disabled = false;
      show($("adapters-error"), "The adapter was not deleted: " + errorText(e), "error");
    }
  }

  function setupAdapters() {
    $("adapters-refresh").addEventListener("click", loadAdapters);
    $("import-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const status = $("import-status");
      if (!needKey($("adapters-error"))) return;
      const file = $("import-file").files[0];
      if (!file) return;
      const form = new FormData();
      if ($("import-name").value.trim()) form.append("name", $("import-name").value.trim());
      if ($("import-trigger").value.trim()) form.append("trigger_word", $("import-trigger").value.trim());
      form.append("file", file, file.name);
      status.textContent = "Importing " + file.name + "…";
      try {
        const a = await api("/v1/adapters", { method: "POST", body: form });
        status.textContent = "Imported " + a.name + " (" + a.format + ", rank " + a.rank + ").";
        $("import-form").reset();
        await loadAdapters();
      } catch (e) {
        status.textContent = "";
        show($("adapters-error"), "The import was refused: " + errorText(e), "error");
      }
    });
  }

  /* ---- Playground ----------------------------------------------------------------------------- */

  function renderAdapterPickers() {
    const gen = $("gen-adapters"), ev = $("eval-adapters");
    const chosen = new Set(Array.from(gen.querySelectorAll("input:checked")).map((i) => i.value));
    const scales = new Map(Array.from(gen.querySelectorAll('input[type="range"]')).map((r) => [r.dataset.id, r.value]));
    gen.replaceChildren();
    ev.replaceChildren();
    if (!state.adapters.length) {
      gen.append(el("p", { class: "muted", text: "No adapters yet." }));
      ev.append(el("p", { class: "muted", text: "No adapters yet." }));
      return;
    }
    state.adapters.forEach((a, i) => {
      const box = el("input", { type: "checkbox", id: "use-" + i, value: a.id, checked: chosen.has(a.id) });
      const range = el("input", { type: "range", id: "scale-" + i, min: "-2", max: "2", step: "0.05",
                                  value: scales.get(a.id) || "1", dataset: { id: a.id } });
      const out = el("output", { for: "scale-" + i, text: Number(range.value).toFixed(2) });
      range.addEventListener("input", () => { out.textContent = Number(range.value).toFixed(2); });
      gen.append(el("div", { class: "pick-row" },
        el("div", { class: "field check" }, box, el("label", { for: "use-" + i, text: a.name + " (" + a.trigger_word + ")" })),
        el("div", { class: "scale" }, el("label", { for: "scale-" + i, text: "Scale" }), range, out)));
      const ebox = el("input", { type: "checkbox", id: "eval-use-" + i, value: a.id });
      ev.append(el("div", { class: "field check" }, ebox, el("label", { for: "eval-use-" + i, text: a.name })));
    });
  }

  function resultCard(title, result) {
    const images = el("div", { class: "images" });
    for (const im of result.images || []) {
      const src = im.png_base64 ? "data:image/png;base64," + im.png_base64 : "";
      images.append(el("figure", {}, el("img", { src, alt: title + ", seed " + im.seed, width: im.width, height: im.height }),
        el("figcaption", { text: "seed " + im.seed + " · " + im.width + "×" + im.height })));
    }
    return el("article", { class: "result" }, el("h3", { text: title }), images);
  }

  function setupPlayground() {
    $("gen-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!needKey($("gen-error"))) return;
      show($("gen-error"), "");
      const adapters = Array.from($("gen-adapters").querySelectorAll("input:checked")).map((box) => {
        const range = box.closest(".pick-row").querySelector('input[type="range"]');
        return { id: box.value, scale: Number(range.value) };
      });
      const base = {
        prompt: $("gen-prompt").value, seed: Number($("gen-seed").value), width: Number($("gen-width").value),
        height: Number($("gen-height").value), steps: Number($("gen-steps").value),
        num_images: Number($("gen-count").value), sync: true,
      };
      const runs = [];
      const label = adapters.length
        ? adapters.map((a) => (state.adapters.find((x) => x.id === a.id) || { name: a.id }).name + " ×" + a.scale.toFixed(2)).join(", ")
        : "base model";
      runs.push({ title: label, body: Object.assign({}, base, { adapters }) });
      if (adapters.length && $("gen-compare").checked)
        runs.push({ title: "base model (no adapter)", body: Object.assign({}, base, { adapters: [] }) });
      // one row per request: the adapters' images beside the base model's, same seed
      const row = el("div", { class: "results-row", role: "group", "aria-label": "Prompt: " + base.prompt + ", seed " + base.seed });
      row.append(...runs.map((r) => {
        r.slot = el("article", { class: "result pending" }, el("h3", { text: r.title }), el("p", { class: "muted", text: "generating…" }));
        return r.slot;
      }));
      $("gen-results").prepend(row);
      $("gen-submit").disabled = true;
      $("gen-status").textContent = "Generating " + runs.length * base.num_images + " image(s)…";
      const still = current();
      await Promise.all(runs.map(async (r) => {
        try {
          const res = await api("/v1/generations", { method: "POST", json: r.body });
          if (still()) r.slot.replaceWith(resultCard(r.title, res));
        } catch (e) {
          r.slot.replaceWith(el("article", { class: "result" }, el("h3", { text: r.title }),
            el("p", { class: "banner error", role: "alert", text: errorText(e) })));
        }
      }));
      $("gen-submit").disabled = false;
      $("gen-status").textContent = "Done.";
    });
  }

  /* ---- Evaluation ----------------------------------------------------------------------------- */

  const fmt = (v) => (typeof v === "number" && isFinite(v) ? v.toFixed(3) : "–");
  const withCi = (v, ci) => fmt(v) + (Array.isArray(ci) ? " [" + fmt(ci[0]) + ", " + fmt(ci[1]) + "]" : "");

  // Each adapter's references, its images and the base model's, as the report shows them.
  async function showEvalImages(id, adapters, still) {
    const box = $("eval-images");
    box.replaceChildren();
    let job;
    try {
      job = await api("/v1/jobs/" + encodeURIComponent(id));
    } catch (e) {
      return;
    }
    const ids = (job.result && job.result.image_ids) || [];
    for (let i = 0; i < adapters.length && i < ids.length && still(); i++) {
      const section = el("section", { class: "eval-adapter" }, el("h3", { text: adapters[i].adapter }));
      for (const [kind, title] of [["refs", "References"], ["gen", "With the adapter"], ["base", "Base model"]]) {
        const strip = el("div", { class: "thumbs", role: "list", "aria-label": title + " of " + adapters[i].adapter });
        section.append(el("h4", { text: title }), strip);
        for (const imageId of (ids[i][kind] || []).slice(0, 12)) {
          try {
            const res = await api("/v1/images/" + encodeURIComponent(imageId) + ".png", { raw: true });
            if (!still()) return;
            strip.append(el("figure", { role: "listitem" },
              el("img", { src: URL.createObjectURL(await res.blob()), alt: title + " of " + adapters[i].adapter })));
          } catch (e) { /* an image removed since is left out */ }
        }
      }
      box.append(section);
    }
  }

  function setupEvaluation() {
    let evalId = null;
    $("eval-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!needKey($("eval-error"))) return;
      show($("eval-error"), "");
      const adapters = Array.from($("eval-adapters").querySelectorAll("input:checked")).map((b) => b.value);
      if (!adapters.length) { show($("eval-error"), "Choose at least one adapter.", "error"); return; }
      const prompts = $("eval-prompts").value.split("\n").map((s) => s.trim()).filter(Boolean);
      const size = Number($("eval-size").value);
      const body = { adapters, width: size, height: size, steps: Number($("eval-steps").value), bootstrap: 200 };
      if (prompts.length) body.prompts = prompts;
      if ($("eval-seeds").value.trim()) body.seeds = $("eval-seeds").value.split(",").map(Number);
      $("eval-submit").disabled = true;
      $("eval-report").hidden = true;
      const status = $("eval-status");
      const still = current();
      try {
        const acc = await api("/v1/evaluations", { method: "POST", json: body });
        evalId = acc.job_id;
        status.textContent = "Evaluation queued…";
        let last = null;
        await readEvents("/v1/jobs/" + encodeURIComponent(evalId) + "/events", undefined, (type, d) => {
          if (!still()) return;
          last = type;
          if (type === "progress" && d.stage) status.textContent = "Evaluating: " + d.stage + " " + (d.done || 0) + " / " + (d.total || 0);
          else if (type === "running") status.textContent = "Evaluation running…";
          else if (type === "failed" || type === "canceled") show($("eval-error"), "The evaluation " + type + ": " + ((d.error || {}).message || ""), "error");
        });
        const e = await api("/v1/evaluations/" + encodeURIComponent(evalId));
        if (!still()) return;
        if (e.state !== "succeeded") {
          if (last !== "failed" && last !== "canceled") show($("eval-error"), "The evaluation ended as " + e.state + ".", "error");
          status.textContent = "";
          return;
        }
        const tbody = $("eval-body");
        tbody.replaceChildren();
        for (const a of e.evaluation.adapters) {
          const id = a.identity_accuracy || {}, b = a.base || {};
          tbody.append(el("tr", {},
            cell("Adapter", el("strong", { text: a.adapter })),
            cell("Identity (retrieval)", withCi(id.retrieval, id.retrieval_ci)),
            cell("Base model", fmt(b.retrieval)),
            cell("Verification", withCi(id.verification, id.verification_ci)),
            cell("Similarity", withCi(a.similarity, a.similarity_ci)),
            cell("Diversity", fmt(a.diversity)),
            cell("Copy rate", fmt(a.copy_rate))));
        }
        $("eval-report").hidden = false;
        status.textContent = "Evaluation " + evalId + " finished.";
        showEvalImages(evalId, e.evaluation.adapters, still);
      } catch (err) {
        status.textContent = "";
        show($("eval-error"), "The evaluation could not run: " + errorText(err), "error");
      } finally {
        $("eval-submit").disabled = false;
      }
    });
    $("eval-download").addEventListener("click", async () => {
      if (!evalId) return;
      try {
        const res = await api("/v1/evaluations/" + encodeURIComponent(evalId) + "/report.html", { raw: true });
        const blob = new Blob([await res.blob()], { type: "text/html" });
        const link = el("a", { href: URL.createObjectURL(blob), download: "evaluation-" + evalId + ".html" });
        document.body.append(link);
        link.click();
        link.remove();
      } catch (e) {
        show($("eval-error"), "The report could not be downloaded: " + errorText(e), "error");
      }
    });
  }

  /* ---- start ------------------------------------------------------------------------------------ */

  function start() {
    setupTabs();
    setupNewAdapter();
    setupTraining();
    setupAdapters();
    setupPlayground();
    setupEvaluation();
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("key-input").value.trim();
      if (key) useKey(key);
    });
    $("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      state.key = null;
      clearTenantView();
      $("key-input").value = "";
      $("key-input").placeholder = "fl_…";
      $("key-status").textContent = "Key forgotten. Enter an API key to begin.";
      show($("key-message"), "");
    });
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) useKey(saved);
    drawLoss();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
