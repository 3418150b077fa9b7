// The ppocr-server web page: pick, drop or paste an image, read it with POST ocr_service, and
// show the boxes over the image beside the recognised lines. Plain browser JavaScript, no build
// step. Every URL is relative to the page, so the page works behind a path prefix too.
// Server data is only ever put in the page as text (textContent, attributes), never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "ppocr-server.api-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  // The options shown first, with labels for people; the rest go under "thresholds".
  const MAIN_OPTIONS = {
    use_angle_cls: "Turn upside-down lines",
    use_det: "Detect lines",
    det_limit_side_len: "Detection size (px)",
    det_limit_type: "Size limit",
    drop_score: "Drop lines scoring below",
  };
  const CHOICE_LABELS = {
    det_limit_type: {max: "max: longest side at most", min: "min: shortest side at least"},
  };
  const STAGES = ["det", "cls", "rec", "decode"];
  const NO_LINES_YET = "The recognised lines appear here, in reading order. Point at a line " +
    "to see its box, or at a box to find its line.";

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, text) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  };

  const state = {
    settings: null,     // GET web/settings, or null while unknown (no token yet, say)
    file: null,         // the File being shown
    imageUrl: null,     // its object URL
    result: null,       // the last done body
    pending: null,      // AbortController of the request in flight
    active: -1,         // the highlighted line
  };

  // ------------------------------------------------------------------ talking to the server

  class ApiFailure extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function token() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
  }

  // fetch + the bearer token + the server's JSON errors turned into ApiFailure.
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const secret = token();
    if (secret) headers.set("Authorization", "Bearer " + secret);
    let response;
    try {
      response = await fetch(path, {...options, headers, cache: "no-store"});
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiFailure(0, "network_error", "The server could not be reached (" +
        (error.message || "network error") + "). Is it running?");
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    if (response.ok && body && typeof body === "object") return body;
    const retryAfter = Number(response.headers.get("Retry-After")) || null;
    if (body && body.error && body.error.code) {
      throw new ApiFailure(response.status, body.error.code, body.error.message || "", retryAfter);
    }
    const excerpt = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200);
    throw new ApiFailure(response.status, "http_" + response.status,
      (response.statusText || "unexpected answer") + (excerpt ? ": " + excerpt : ""), retryAfter);
  }

  // ------------------------------------------------------------------ settings and options

  async function loadSettings() {
    const note = $("settings-note");
    try {
      state.settings = await api("web/settings");
      note.hidden = true;
      setTokenState(token() ? "ok" : "none");
    } catch (error) {
      state.settings = null;
      note.hidden = false;
      if (error.code === "unauthorized") {
        setTokenState("needed");
        note.textContent = "This server needs an API token: paste it under “API token” " +
          "at the top right. Until then the options show nothing.";
      } else {
        note.textContent = "Could not load the server's options (" + error.code + ": " +
          error.message + "). Images are read with the server's defaults.";
      }
    }
    renderOptions();
  }

  function renderOptions() {
    const settings = state.settings;
    const model = $("opt-model");
    model.replaceChildren();
    if (settings) {
      for (const name of settings.models) {
        const label = name === settings.default_model ? name + " (default)" : name;
        model.append(el("option", {value: name}, label));
      }
      model.value = settings.default_model;
      model.dataset.default = settings.default_model;
    } else {
      model.append(el("option", {value: ""}, "server default"));
      model.dataset.default = "";
    }
    model.disabled = !settings;
    const main = $("main-options");
    const more = $("more-options");
    main.replaceChildren();
    more.replaceChildren();
    for (const option of settings ? settings.options : []) {
      (option.name in MAIN_OPTIONS ? main : more).append(optionField(option));
    }
    // The main ones in the order of MAIN_OPTIONS.
    for (const name of Object.keys(MAIN_OPTIONS)) {
      const field = main.querySelector(`[data-option="${name}"]`);
      if (field) main.append(field);
    }
    updateRunButton();
  }

  function optionField(option) {
    const id = "opt-" + option.name;
    const label = MAIN_OPTIONS[option.name] || option.name;
    const field = el("div", {class: "field", "data-option": option.name});
    const help = el("p", {class: "hint field-help", id: id + "-help"}, option.description);
    let input;
    if (option.type === "boolean") {
      field.classList.add("check");
      input = el("input", {type: "checkbox", id, name: option.name});
      input.checked = Boolean(option.default);
      input.dataset.default = String(Boolean(option.default));
      const box = el("label", {for: id, class: "check-label"});
      box.append(input, el("span", {}, label));
      field.append(box);
    } else if (option.enum) {
      input = el("select", {id, name: option.name});
      for (const choice of option.enum) {
        const text = (CHOICE_LABELS[option.name] || {})[choice] || choice;
        input.append(el("option", {value: choice}, text));
      }
      input.value = option.default;
      input.dataset.default = String(option.default);
      field.append(el("label", {for: id}, label), input);
    } else {
      const integer = option.type === "integer";
      const unit = option.minimum === 0 && option.maximum === 1;
      input = el("input", {type: "number", id, name: option.name, inputmode: integer ? "numeric" : "decimal",
        step: integer ? "1" : unit ? "0.01" : "0.1"});
      if (option.minimum !== undefined) input.min = option.minimum;
      if (option.maximum !== undefined) input.max = option.maximum;
      input.value = option.default;
      input.dataset.default = String(option.default);
      field.append(el("label", {for: id}, label), input);
    }
    input.setAttribute("aria-describedby", help.id);
    input.dataset.option = option.name;
    field.append(help);
    return field;
  }

  // The fields that differ from the server's defaults (an unchanged option is not sent, so the
  // request reads exactly as the server is configured).
  function chosenOptions() {
    const chosen = {};
    const model = $("opt-model");
    if (model.value && model.value !== model.dataset.default) chosen.model = model.value;
    for (const input of document.querySelectorAll("[data-option]:is(input, select)")) {
      const value = input.type === "checkbox" ? String(input.checked) : input.value.trim();
      if (value !== "" && value !== input.dataset.default) chosen[input.dataset.option] = value;
    }
    return chosen;
  }

  function resetOptions() {
    for (const input of document.querySelectorAll("[data-option]:is(input, select), #opt-model")) {
      if (input.type === "checkbox") input.checked = input.dataset.default === "true";
      else input.value = input.dataset.default;
    }
  }

  // ------------------------------------------------------------------ reading an image

  function takeFile(file) {
    if (!file) return;
    state.file = file;
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = URL.createObjectURL(file);
    const name = $("file-name");
    name.hidden = false;
    name.textContent = (file.name || "pasted image") + " · " + formatBytes(file.size);
    clearResult();
    const picture = $("picture");
    $("stage").classList.remove("no-preview");
    picture.hidden = false;
    picture.src = state.imageUrl;
    showStage(true);
    read();
  }

  async function read() {
    if (!state.file) return;
    if (state.pending) state.pending.abort();
    state.pending = null;
    hideMessage();
    clearResult();
    const limit = state.settings && state.settings.max_body_size;
    if (limit && state.file.size > limit) {
      setBusy(false);
      showError(new ApiFailure(413, "too_large", "The file is " + formatBytes(state.file.size) +
        "; this server takes at most " + formatBytes(limit) + " (checked here, before sending)."));
      return;
    }
    const controller = new AbortController();
    state.pending = controller;
    const form = new FormData();
    form.append("file_type", "file");
    for (const [name, value] of Object.entries(chosenOptions())) form.append(name, value);
    form.append("file", state.file, state.file.name || "pasted-image");
    setBusy(true);
    const started = performance.now();
    try {
      const result = await api("ocr_service", {method: "POST", body: form, signal: controller.signal});
      if (state.pending !== controller) return;
      showResult(result, performance.now() - started);
    } catch (error) {
      if (error.name === "AbortError" || state.pending !== controller) return;
      showError(error);
    } finally {
      if (state.pending === controller) {
        state.pending = null;
        setBusy(false);
      }
    }
  }

  function setBusy(busy) {
    $("busy").hidden = !busy;
    $("stage").classList.toggle("is-busy", busy);
    document.body.classList.toggle("is-reading", busy);
    updateRunButton();
  }

  function updateRunButton() {
    $("run").disabled = !state.file || Boolean(state.pending);
  }

  // ------------------------------------------------------------------ showing the result

  function clearResult() {
    state.result = null;
    state.active = -1;
    $("overlay").replaceChildren();
    $("lines").replaceChildren();
    $("line-count").textContent = "";
    $("lines-empty").hidden = false;
    $("lines-empty").textContent = NO_LINES_YET;
    $("chips").hidden = true;
    $("timings").hidden = true;
    $("copy").disabled = true;
    $("download").disabled = true;
  }

  function showResult(result, roundTripMs) {
    state.result = result;
    const lines = Array.isArray(result.lines) ? result.lines : [];
    drawBoxes(result, lines);
    listLines(lines);
    summarise(result, lines, roundTripMs);
    $("copy").disabled = lines.length === 0;
    $("download").disabled = false;
  }

  function drawBoxes(result, lines) {
    const overlay = $("overlay");
    overlay.setAttribute("viewBox", `0 0 ${result.width} ${result.height}`);
    const picture = $("picture");
    // A format the browser cannot show (TIFF, say) is still read by the server: draw the boxes
    // on a blank page of the image's size.
    if (picture.hidden || (picture.complete && picture.naturalWidth === 0)) {
      showBlankStage(result.width, result.height);
    }
    const boxes = lines.map((line, index) => {
      const polygon = document.createElementNS(SVG_NS, "polygon");
      polygon.setAttribute("points", line.box.map((point) => point.join(",")).join(" "));
      polygon.setAttribute("class", "box");
      polygon.dataset.index = String(index);
      const title = document.createElementNS(SVG_NS, "title");
      title.textContent = line.text;
      polygon.append(title);
      return polygon;
    });
    overlay.replaceChildren(...boxes);
  }

  // The stage is sized from the image's own size: "Fit" scales it to the space there is (up
  // or down), "Actual size" shows it at its pixels; the overlay's viewBox is in image pixels,
  // so the boxes scale with it at any size.
  function sizeStage(width, height) {
    const stage = $("stage");
    stage.style.setProperty("--ratio", String(width / height));
    stage.style.setProperty("--natural-width", width + "px");
  }

  // The image when there is one to show, else the drop zone again.
  function showStage(shown) {
    $("stage-scroll").hidden = !shown;
    $("zoom").hidden = !shown;
    $("dropzone").hidden = shown;
  }

  function showBlankStage(width, height) {
    $("stage").classList.add("no-preview");
    $("picture").hidden = true;
    sizeStage(width, height);
    showStage(true);
  }

  function listLines(lines) {
    const list = $("lines");
    list.replaceChildren(...lines.map((line, index) => {
      const item = el("li", {class: "line", tabindex: "0", "data-index": String(index)});
      const confidence = Number(line.confidence);
      const score = el("span", {class: "line-score" + (confidence < 0.8 ? " low" : ""),
        title: "confidence " + confidence.toFixed(5)}, (confidence * 100).toFixed(1) + "%");
      item.append(el("span", {class: "line-number"}, String(index + 1)),
        el("span", {class: "line-text"}, line.text), score);
      return item;
    }));
    $("line-count").textContent = lines.length === 1 ? "1 line" : lines.length + " lines";
    $("lines-empty").hidden = lines.length > 0;
    if (lines.length === 0) $("lines-empty").textContent = "No text found in this image.";
  }

  function summarise(result, lines, roundTripMs) {
    const chips = $("chips");
    const chip = (text, kind = "") => el("span", {class: "chip " + kind}, text);
    chips.replaceChildren(
      chip(result.cached ? "from the cache" : "fresh run", result.cached ? "cached" : "fresh"),
      chip(result.model || "model ?"),
      chip(`${result.width} × ${result.height} px`),
      chip(lines.length === 1 ? "1 line" : lines.length + " lines"),
      chip("server " + formatMs(result.elapsed_ms)),
      chip("round trip " + formatMs(roundTripMs)),
    );
    chips.children[4].title = "elapsed_ms: the server's time for this request";
    chips.children[5].title = "as measured by this browser, upload included";
    const timings = result.timings_ms || {};
    const known = STAGES.filter((name) => typeof timings[name] === "number");
    const others = Object.keys(timings).filter((name) => !STAGES.includes(name) &&
      name !== "total" && typeof timings[name] === "number");
    const stages = [...known, ...others];
    const sum = stages.reduce((total, name) => total + timings[name], 0) || 1;
    const bar = el("div", {class: "timing-bar", role: "img",
      "aria-label": stages.map((name) => `${name} ${formatMs(timings[name])}`).join(", ")});
    const legend = el("div", {class: "timing-legend"});
    stages.forEach((name, index) => {
      const part = el("span", {class: "timing-part stage-" + (index % 5)});
      part.style.flexGrow = String(Math.max(timings[name], 0.0001));
      part.title = `${name}: ${formatMs(timings[name])}`;
      bar.append(part);
      const entry = el("span", {class: "timing-entry"});
      entry.append(el("span", {class: "swatch stage-" + (index % 5)}),
        el("span", {}, name + " "), el("strong", {}, formatMs(timings[name])));
      legend.append(entry);
    });
    const total = typeof timings.total === "number" ? timings.total : sum;
    const heading = el("div", {class: "timing-head"});
    heading.append(el("span", {}, result.cached ? "Stage times (of the cached run)" :
      "Stage times"), el("strong", {}, formatMs(total) + " total"));
    $("timings").replaceChildren(heading, bar, legend);
    $("timings").hidden = stages.length === 0;
    chips.hidden = false;
  }

  // ------------------------------------------------------------------ a line and its box

  function setActive(index, scroll) {
    if (index === state.active) return;
    const previous = state.active;
    state.active = index;
    for (const node of document.querySelectorAll(`[data-index="${previous}"]`)) node.classList.remove("active");
    if (index < 0) return;
    for (const node of document.querySelectorAll(`[data-index="${index}"]`)) node.classList.add("active");
    const line = $("lines").querySelector(`[data-index="${index}"]`);
    if (scroll === "line" && line) line.scrollIntoView({block: "nearest"});
    if (scroll === "box") {
      const box = $("overlay").querySelector(`[data-index="${index}"]`);
      if (box) box.scrollIntoView({block: "nearest", inline: "nearest"});
    }
  }

  function indexOf(event) {
    const node = event.target.closest && event.target.closest("[data-index]");
    return node ? Number(node.dataset.index) : -1;
  }

  function wireHighlighting() {
    const lines = $("lines");
    const overlay = $("overlay");
    lines.addEventListener("mouseover", (event) => { const i = indexOf(event); if (i >= 0) setActive(i); });
    lines.addEventListener("mouseleave", () => setActive(-1));
    lines.addEventListener("focusin", (event) => setActive(indexOf(event), "box"));
    lines.addEventListener("focusout", () => setActive(-1));
    overlay.addEventListener("mouseover", (event) => { const i = indexOf(event); if (i >= 0) setActive(i, "line"); });
    overlay.addEventListener("mouseleave", () => setActive(-1));
    overlay.addEventListener("click", (event) => {
      const i = indexOf(event);
      const line = i >= 0 && lines.querySelector(`[data-index="${i}"]`);
      if (line) line.focus({preventScroll: false});
    });
  }

  // ------------------------------------------------------------------ messages

  function showError(error) {
    const hints = {
      unauthorized: "Paste the server's API token under “API token” at the top right.",
      queue_full: "The server is busy.",
      unavailable: "No OCR worker is running right now.",
      shutting_down: "The server is restarting or stopping.",
      network_error: "",
    };
    if (error.code === "unauthorized") {
      setTokenState("needed");
      $("token-panel").open = true;
    }
    let hint = hints[error.code] || "";
    if (error.retryAfter) hint += (hint ? " " : "") + `Try again in ${error.retryAfter} s.`;
    showMessage(error.code + (error.status ? ` · HTTP ${error.status}` : ""), error.message || "",
      hint, "error");
  }

  function showMessage(title, text, hint, kind) {
    const box = $("message");
    box.className = "message " + kind;
    $("message-title").textContent = title;
    $("message-text").textContent = text;
    $("message-hint").textContent = hint;
    $("message-hint").hidden = !hint;
    box.hidden = false;
  }

  function hideMessage() { $("message").hidden = true; }

  let toastTimer = 0;
  function toast(text) {
    const node = $("toast");
    node.textContent = text;
    node.classList.add("shown");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => node.classList.remove("shown"), 1800);
  }

  // ------------------------------------------------------------------ copy and download

  async function copyText() {
    if (!state.result) return;
    const text = state.result.text ?? state.result.lines.map((line) => line.text).join("\n");
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API (a plain-http page that is not localhost): the old way.
      const area = el("textarea", {class: "visually-hidden", readonly: ""});
      area.value = text;
      document.body.append(area);
      area.select();
      const copied = document.execCommand("copy");
      area.remove();
      if (!copied) { toast("The browser refused to copy"); return; }
    }
    toast("Text copied");
  }

  function downloadJson() {
    if (!state.result) return;
    const blob = new Blob([JSON.stringify(state.result, null, 2) + "\n"], {type: "application/json"});
    const url = URL.createObjectURL(blob);
    const base = (state.file && state.file.name ? state.file.name : "image").replace(/\.[^.]*$/, "");
    const link = el("a", {href: url, download: base + ".ocr.json"});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ------------------------------------------------------------------ token

  function setTokenState(kind) {
    const labels = {ok: "API token saved", none: "API token", needed: "API token needed"};
    $("token-state").textContent = labels[kind];
    $("token-dot").className = "token-dot " + kind;
  }

  function wireToken() {
    const input = $("token-input");
    input.value = token();
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      try {
        if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
      } catch { toast("This browser does not keep the token (storage is off)"); }
      $("token-panel").open = false;
      toast(value ? "Token saved in this browser" : "Token removed");
      loadSettings();
    });
    $("token-forget").addEventListener("click", () => {
      input.value = "";
      try { localStorage.removeItem(TOKEN_KEY); } catch { /* storage off: nothing kept */ }
      toast("Token removed from this browser");
      loadSettings();
    });
  }

  // ------------------------------------------------------------------ picking an image

  function firstImage(items) {
    for (const item of items || []) {
      const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
      if (file) return file;
    }
    return null;
  }

  function wireInput() {
    const input = $("file-input");
    input.addEventListener("change", () => {
      takeFile(input.files[0]);
      input.value = "";  // choosing the same file again reads it again
    });
    document.addEventListener("paste", (event) => {
      const file = firstImage(event.clipboardData && event.clipboardData.items);
      if (!file) return;  // text pasted into a field stays there
      event.preventDefault();
      takeFile(file);
    });
    const veil = $("drop-veil");
    let depth = 0;
    const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
    window.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      veil.hidden = false;
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) veil.hidden = true;
    });
    window.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      veil.hidden = true;
      takeFile(firstImage(event.dataTransfer.files));
    });
    $("dropzone").addEventListener("click", () => input.click());
  }

  function wireZoom() {
    const fit = $("zoom-fit");
    const actual = $("zoom-actual");
    const set = (mode) => {
      $("stage-scroll").classList.toggle("actual", mode === "actual");
      fit.setAttribute("aria-pressed", String(mode === "fit"));
      actual.setAttribute("aria-pressed", String(mode === "actual"));
    };
    fit.addEventListener("click", () => set("fit"));
    actual.addEventListener("click", () => set("actual"));
  }

  // ------------------------------------------------------------------ helpers

  function formatMs(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "–";
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : (ms >= 10 ? ms.toFixed(0) : ms.toFixed(1)) + " ms";
  }

  function formatBytes(bytes) {
    if (bytes >= 1 << 20) return (bytes / (1 << 20)).toFixed(1) + " MB";
    if (bytes >= 1024) return (bytes / 1024).toFixed(0) + " kB";
    return bytes + " bytes";
  }

  // ------------------------------------------------------------------ start

  function start() {
    wireToken();
    wireInput();
    wireHighlighting();
    wireZoom();
    $("options").addEventListener("submit", (event) => { event.preventDefault(); read(); });
    $("reset").addEventListener("click", resetOptions);
    $("copy").addEventListener("click", copyText);
    $("download").addEventListener("click", downloadJson);
    $("picture").addEventListener("load", () => {
      const picture = $("picture");
      sizeStage(picture.naturalWidth, picture.naturalHeight);
      if (!state.result) $("overlay").setAttribute("viewBox", `0 0 ${picture.naturalWidth} ${picture.naturalHeight}`);
    });
    $("picture").addEventListener("error", () => {
      if (!state.file) return;
      $("picture").hidden = true;
      // Nothing to show until the server says how big the image is (or that it is none).
      if (state.result) showBlankStage(state.result.width, state.result.height);
      else showStage(false);
    });
    loadSettings();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
