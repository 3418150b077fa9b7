// The ppocr-server web page. Two views, chosen by the address's #hash:
// - Read: pick, drop or paste an image or a document (PDF, TIFF), read it with POST
//   ocr_service, and show the boxes over the image beside the recognised lines. A document's
//   pages are tiles to move between; a page is shown "reconstructed" (its boxes, with their
//   text, drawn to scale on a blank page of its size), since a browser renders neither PDF
//   nor TIFF pages without a library, and the front end never renders documents.
// - Jobs: start a folder or ZIP job (POST jobs), follow its progress (GET jobs, polled while a
//   job is queued or running), cancel, delete, export its results.
// Plain browser JavaScript, no build step. Every URL is relative to the page, so the page
// works behind a path prefix too. Server data is only ever put in the page as text
// (textContent, attributes), never as HTML.
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
  const DOCUMENT_LABELS = {
    pages: "Pages",
    dpi: "Resolution (dpi)",
    pdf_text: "PDF text layer",
    password: "Password",
  };
  const CHOICE_LABELS = {
    det_limit_type: {max: "max: longest side at most", min: "min: shortest side at least",
      page: "page: own size, longest side at most"},
    text_grammar: {none: "none: any text", plate: "plate: Chinese licence plates only"},
    cls_long_lines: {squeeze: "squeeze: whole (PaddleOCR)", windows: "windows: in pieces"},
    pdf_text: {ocr: "ocr: read the rendered page", auto: "auto: its text layer where it has one",
      only: "only: the text layer, no OCR"},
  };
  const PLACEHOLDERS = {pages: "every page, or e.g. 1-3,7", password: "only for an encrypted PDF"};
  // What a job takes besides the OCR options (pages and password are a single document's).
  const JOB_DOCUMENT_FIELDS = ["dpi", "pdf_text"];
  const STAGES = ["det", "cls", "rec", "decode"];
  const NO_LINES_YET = "The recognised lines appear here, in reading order. Point at a line " +
    "to see its box, or at a box to find its line.";
  const TASK_POLL_MS = 400;
  const JOBS_POLL_MS = 1500;           // while a job runs and the Jobs view is shown
  const JOBS_POLL_HIDDEN_MS = 6000;    // while a job runs and another view is shown (the badge)
  const JOBS_PER_PAGE = 20;
  const EXPORTS = [["json", "JSON", "an array of one object per item"],
    ["jsonl", "JSONL", "JSON lines: one object per item"],
    ["csv", "CSV", "one row per text line, with its box"], ["txt", "TXT", "each item's text"]];
  const ACTIVE_JOB = new Set(["queued", "running"]);
  const STATUS_LABELS = {queued: "waiting", running: "running", done: "done", failed: "failed",
    cancelled: "cancelled"};

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, text) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const svg = (tag, attrs = {}) => {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  };

  const state = {
    settings: null,     // GET web/settings, or null while unknown (no token yet, say)
    file: null,         // the File being shown
    kind: "image",      // what it is by its first bytes: image, pdf or tiff
    imageUrl: null,     // its object URL (images only)
    result: null,       // the last done body
    pages: null,        // a document's pages (result.pages), else null
    pageIndex: 0,       // the page shown
    pending: null,      // AbortController of the request in flight
    active: -1,         // the highlighted line
    taking: 0,          // counts files taken, so a slow sniff never shows a stale file
    jobs: {list: [], offset: 0, total: 0, timer: 0, failed: false, loading: null,
      details: new Set(), zip: null},
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

  // fetch + the bearer token; a successful Response, or the server's JSON error as ApiFailure.
  async function send(path, options = {}) {
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
    if (response.ok) return response;
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    const retryAfter = Number(response.headers.get("Retry-After")) || null;
    if (body && body.error && body.error.code) {
      throw new ApiFailure(response.status, body.error.code, body.error.message || "", retryAfter);
    }
    const excerpt = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200);
    throw new ApiFailure(response.status, "http_" + response.status,
      (response.statusText || "unexpected answer") + (excerpt ? ": " + excerpt : ""), retryAfter);
  }

  // send() for a JSON answer: its body ({} for an empty one, as DELETE's 204).
  async function api(path, options = {}) {
    const response = await send(path, options);
    const text = await response.text();
    if (!text) return {};
    try {
      const body = JSON.parse(text);
      if (body && typeof body === "object") return body;
    } catch { /* below */ }
    throw new ApiFailure(response.status, "http_" + response.status,
      "the server's answer is not JSON: " + text.slice(0, 200));
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
    renderJobForms();
    if (jobsEnabled()) loadJobs();
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
      (option.name in MAIN_OPTIONS ? main : more).append(optionField(option, "option"));
    }
    // The main ones in the order of MAIN_OPTIONS.
    for (const name of Object.keys(MAIN_OPTIONS)) {
      const field = main.querySelector(`[data-option="${name}"]`);
      if (field) main.append(field);
    }
    const documents = $("document-options");
    documents.replaceChildren(...((settings && settings.document_options) || [])
      .map((option) => optionField(option, "docOption")));
    $("document-options-panel").hidden = documents.children.length === 0;
    updateRunButton();
  }

  // A labelled input for one option; `group` is the dataset key that marks it ("option": an
  // OCR option, "docOption": a PDF/TIFF field).
  function optionField(option, group) {
    const id = "opt-" + option.name;
    const label = MAIN_OPTIONS[option.name] || DOCUMENT_LABELS[option.name] || option.name;
    const field = el("div", {class: "field"});
    field.dataset[group] = option.name;
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
    } else if (option.type === "string") {
      const secret = option.name === "password";
      input = el("input", {type: secret ? "password" : "text", id, name: option.name,
        autocomplete: "off", spellcheck: "false"});
      if (PLACEHOLDERS[option.name]) input.placeholder = PLACEHOLDERS[option.name];
      input.value = option.default ?? "";
      input.dataset.default = String(option.default ?? "");
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
    input.dataset[group] = option.name;
    field.append(help);
    return field;
  }

  // The fields of `group` that differ from the server's defaults (an unchanged option is not
  // sent, so the request reads exactly as the server is configured).
  function changedFields(group) {
    const chosen = {};
    const attribute = group === "option" ? "data-option" : "data-doc-option";
    for (const input of document.querySelectorAll(`[${attribute}]:is(input, select)`)) {
      const value = input.type === "checkbox" ? String(input.checked) : input.value.trim();
      if (value !== "" && value !== input.dataset.default) chosen[input.dataset[group]] = value;
    }
    return chosen;
  }

  function chosenOptions() {
    const chosen = {};
    const model = $("opt-model");
    if (model.value && model.value !== model.dataset.default) chosen.model = model.value;
    return {...chosen, ...changedFields("option")};
  }

  // A job's fields: the model and OCR options, and how PDF pages are rendered.
  function jobOptions() {
    const documentFields = changedFields("docOption");
    const chosen = chosenOptions();
    for (const name of JOB_DOCUMENT_FIELDS) {
      if (name in documentFields) chosen[name] = documentFields[name];
    }
    return chosen;
  }

  function resetOptions() {
    const inputs = "[data-option]:is(input, select), [data-doc-option]:is(input, select), #opt-model";
    for (const input of document.querySelectorAll(inputs)) {
      if (input.type === "checkbox") input.checked = input.dataset.default === "true";
      else input.value = input.dataset.default;
    }
    updateJobOptionsNote();
  }

  // ------------------------------------------------------------------ views

  function currentView() {
    return location.hash === "#jobs" ? "jobs" : "read";
  }

  function showView() {
    const view = currentView();
    for (const section of document.querySelectorAll("main > .view")) {
      section.hidden = section.dataset.view !== view;
    }
    for (const tab of document.querySelectorAll(".view-tab")) {
      if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    document.title = view === "jobs" ? "Jobs · ppocr-server" : "ppocr-server";
    if (view === "jobs") {
      updateJobOptionsNote();
      if (jobsEnabled()) loadJobs();
    } else {
      scheduleJobsPoll();
    }
  }

  // ------------------------------------------------------------------ reading a file

  // What the file is by its first bytes (the server decides the same way): a PDF has
  // "%PDF-" near its start, a TIFF starts II*\0 or MM\0*, a ZIP PK\3\4 (PK\5\6 when empty).
  async function sniff(file) {
    let head;
    try {
      head = new Uint8Array(await file.slice(0, 1024).arrayBuffer());
    } catch {
      return "image";
    }
    const starts = (...bytes) => bytes.every((byte, i) => head[i] === byte);
    if (starts(0x49, 0x49, 0x2a, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2a)) return "tiff";
    if (starts(0x50, 0x4b, 0x03, 0x04) || starts(0x50, 0x4b, 0x05, 0x06)) return "zip";
    const text = String.fromCharCode(...head.subarray(0, 1024));
    return text.includes("%PDF-") ? "pdf" : "image";
  }

  async function takeFile(file) {
    if (!file) return;
    const taking = ++state.taking;
    const kind = await sniff(file);
    if (taking !== state.taking) return;  // another file came meanwhile
    if (kind === "zip") {
      chooseZip(file);
      location.hash = "#jobs";
      toast("A ZIP is read as a job: start it here");
      return;
    }
    if (currentView() !== "read") location.hash = "#read";
    if (state.pending) state.pending.abort();
    state.file = file;
    state.kind = kind;
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = null;
    const name = $("file-name");
    name.hidden = false;
    name.textContent = (file.name || "pasted image") + " · " + formatBytes(file.size) +
      (kind === "image" ? "" : " · " + kind.toUpperCase());
    clearResult();
    const picture = $("picture");
    if (kind === "image") {
      state.imageUrl = URL.createObjectURL(file);
      $("stage").classList.remove("no-preview");
      $("stage-note").hidden = true;
      picture.hidden = false;
      picture.src = state.imageUrl;
      showStage(true);
    } else {
      // Nothing the browser can show: a blank page until the server says what the pages are.
      picture.hidden = true;
      picture.removeAttribute("src");
      showBlankStage(612, 792);
      setStageNote("");
    }
    read();
  }

  function isDocument() {
    return state.kind === "pdf" || state.kind === "tiff";
  }

  async function read() {
    if (!state.file) return;
    if (state.pending) state.pending.abort();
    state.pending = null;
    hideMessage("message");
    clearResult();
    const limit = state.settings && state.settings.max_body_size;
    if (limit && state.file.size > limit) {
      setBusy(false);
      if (isDocument()) showStage(false);
      showError(new ApiFailure(413, "too_large", "The file is " + formatBytes(state.file.size) +
        "; this server takes at most " + formatBytes(limit) + " (checked here, before sending)."));
      return;
    }
    const controller = new AbortController();
    state.pending = controller;
    const documentRead = isDocument();
    const form = new FormData();
    form.append("file_type", "file");
    for (const [name, value] of Object.entries(chosenOptions())) form.append(name, value);
    if (documentRead) {
      // A document is a task: its pages are read in turn and the poll says how far it got.
      for (const [name, value] of Object.entries(changedFields("docOption"))) form.append(name, value);
      form.append("block_flag", "false");
    }
    form.append("file", state.file, state.file.name || "pasted-image");
    setBusy(true, documentRead ? "Sending the document…" : "Reading…");
    const started = performance.now();
    try {
      let result = await api("ocr_service", {method: "POST", body: form, signal: controller.signal});
      if (result.status === "pending") result = await awaitTask(result, controller);
      if (state.pending !== controller) return;
      showResult(result, performance.now() - started);
    } catch (error) {
      if (error.name === "AbortError" || state.pending !== controller) return;
      if (documentRead) showStage(false);
      showError(error);
    } finally {
      if (state.pending === controller) {
        state.pending = null;
        setBusy(false);
      }
    }
  }

  // Polls a task until it is done (its body) or failed (its error, thrown by api()).
  async function awaitTask(task, controller) {
    const path = "ocr_service/" + encodeURIComponent(task.id);
    let body = task;
    while (body.status === "pending") {
      const progress = body.progress;
      if (progress && progress.total) {
        const unit = progress.total === 1 ? "page" : "pages";
        setBusyText(`Reading… ${progress.done} of ${progress.total} ${unit} read`);
      } else {
        setBusyText("Reading…");
      }
      await sleep(TASK_POLL_MS, controller.signal);
      body = await api(path, {signal: controller.signal});
    }
    return body;
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("aborted", "AbortError"));
      }, {once: true});
    });
  }

  function setBusy(busy, text = "Reading…") {
    $("busy").hidden = !busy;
    if (busy) setBusyText(text);
    $("stage").classList.toggle("is-busy", busy);
    document.body.classList.toggle("is-reading", busy);
    updateRunButton();
  }

  function setBusyText(text) {
    $("busy-text").textContent = text;
  }

  function updateRunButton() {
    $("run").disabled = !state.file || Boolean(state.pending);
  }

  // ------------------------------------------------------------------ showing the result

  function clearResult() {
    state.result = null;
    state.pages = null;
    state.pageIndex = 0;
    state.active = -1;
    $("overlay").replaceChildren();
    $("lines").replaceChildren();
    $("line-count").textContent = "";
    $("lines-title").textContent = "Text";
    $("lines-empty").hidden = false;
    $("lines-empty").textContent = NO_LINES_YET;
    $("chips").hidden = true;
    $("timings").hidden = true;
    $("pages").hidden = true;
    $("page-strip").replaceChildren();
    $("copy").disabled = true;
    $("download").disabled = true;
  }

  function showResult(result, roundTripMs) {
    state.result = result;
    state.roundTripMs = roundTripMs;
    if (Array.isArray(result.pages)) {
      state.pages = result.pages;
      buildPageStrip(result);
      showPage(0);
      $("copy").disabled = !result.text;
    } else {
      const lines = Array.isArray(result.lines) ? result.lines : [];
      drawBoxes(result, lines);
      listLines(lines, "No text found in this image.");
      summarise(result, lines, roundTripMs);
      $("copy").disabled = lines.length === 0;
    }
    $("download").disabled = false;
  }

  function showPage(index) {
    const pages = state.pages;
    if (!pages || !pages.length) {
      showBlankStage(612, 792);
      listLines([], "The document has no pages to show.");
      summariseDocument(state.result, null, state.roundTripMs);
      return;
    }
    index = Math.max(0, Math.min(index, pages.length - 1));
    state.pageIndex = index;
    state.active = -1;
    const page = pages[index];
    const lines = Array.isArray(page.lines) ? page.lines : [];
    showBlankStage(page.width, page.height);
    setStageNote("document");
    drawBoxes(page, lines);
    listLines(lines, page.source === "text_layer" ? "This page's text layer is empty." :
      "No text found on this page.");
    $("lines-title").textContent = "Page " + page.page;
    summariseDocument(state.result, page, state.roundTripMs);
    for (const tile of $("page-strip").querySelectorAll(".page-tile")) {
      const current = Number(tile.dataset.pageIndex) === index;
      tile.setAttribute("aria-current", current ? "page" : "false");
    }
    const currentTile = $("page-strip").querySelector(`[data-page-index="${index}"]`);
    if (currentTile) currentTile.scrollIntoView({block: "nearest", inline: "nearest"});
    $("page-prev").disabled = index === 0;
    $("page-next").disabled = index === pages.length - 1;
    $("page-label").textContent = pages.length === (state.result.page_count || pages.length) ?
      `Page ${page.page} of ${pages.length}` : `Page ${page.page} · ${index + 1} of ${pages.length} read`;
    $("stage-scroll").scrollTop = 0;
  }

  // One tile per page read: a miniature of the page (its boxes as bars on a blank page of its
  // shape), its number, its line count and its size.
  function buildPageStrip(result) {
    const pages = result.pages;
    const strip = $("page-strip");
    strip.replaceChildren(...pages.map((page, index) => {
      const lines = Array.isArray(page.lines) ? page.lines : [];
      const item = el("li", {class: "page-item"});
      const count = lines.length === 1 ? "1 line" : lines.length + " lines";
      const tile = el("button", {type: "button", class: "page-tile", "data-page-index": String(index),
        "aria-current": "false", title: `Page ${page.page}: ${count}, ${page.width} × ${page.height} px` +
        (page.source === "text_layer" ? ", from its text layer" : "")});
      const thumb = svg("svg", {class: "page-thumb", viewBox: `0 0 ${page.width} ${page.height}`,
        preserveAspectRatio: "xMidYMid meet", "aria-hidden": "true"});
      thumb.append(svg("rect", {class: "thumb-page", x: "0", y: "0", width: String(page.width),
        height: String(page.height)}));
      for (const line of lines) {
        thumb.append(svg("polygon", {class: "thumb-line",
          points: line.box.map((point) => point.join(",")).join(" ")}));
      }
      const picture = el("span", {class: "page-tile-picture"});
      picture.append(thumb, el("span", {class: "page-tile-number"}, String(page.page)));
      tile.append(picture, el("span", {class: "page-tile-lines"},
        page.source === "text_layer" ? count + " · text" : count),
      el("span", {class: "page-tile-size"}, `${page.width} × ${page.height}`));
      item.append(tile);
      return item;
    }));
    const read = pages.length;
    const all = result.page_count || read;
    $("page-count").textContent = read === all ? (all === 1 ? "1 page" : all + " pages") :
      `${read} of ${all} pages`;
    $("pages").hidden = false;
  }

  function drawBoxes(size, lines) {
    const overlay = $("overlay");
    overlay.setAttribute("viewBox", `0 0 ${size.width} ${size.height}`);
    const picture = $("picture");
    // A format the browser cannot show is still read by the server: draw the boxes, with
    // their text, on a blank page of the image's size.
    if (!state.pages && (picture.hidden || (picture.complete && picture.naturalWidth === 0))) {
      showBlankStage(size.width, size.height);
      setStageNote("image");
    }
    const boxes = lines.map((line, index) => {
      const polygon = svg("polygon", {class: "box", "data-index": String(index),
        points: line.box.map((point) => point.join(",")).join(" ")});
      const title = svg("title");
      title.textContent = line.text;
      polygon.append(title);
      return polygon;
    });
    overlay.replaceChildren(...boxes);
    if ($("stage").classList.contains("no-preview")) {
      const texts = svg("g", {class: "box-texts"});
      lines.forEach((line, index) => texts.append(boxText(line, index)));
      overlay.append(texts);
    }
  }

  // A line's text laid in its box, from its left edge along its slant: as large as fits the
  // box's width, at most about the box's height (squeezed sideways when even a small font
  // runs wider). A box much taller than wide holds a line read top to bottom (the recogniser
  // turns such crops), so its text is turned a quarter.
  function boxText(line, index) {
    const [p0, p1, , p3] = line.box;
    const centre = line.box.reduce((sum, [x, y]) => [sum[0] + x / 4, sum[1] + y / 4], [0, 0]);
    let width = Math.hypot(p1[0] - p0[0], p1[1] - p0[1]);
    let height = Math.hypot(p3[0] - p0[0], p3[1] - p0[1]);
    let angle = Math.atan2(p1[1] - p0[1], p1[0] - p0[0]) * 180 / Math.PI;
    if (height >= 1.5 * width && [...line.text].length > 1) {
      [width, height] = [height, width];
      angle += 90;
    }
    const inset = Math.min(width * 0.04, height * 0.25);
    const target = Math.max(1, width - 2 * inset);
    const tallest = Math.max(1, height * 0.82);
    const smallest = Math.max(1, height * 0.55);
    const measured = textWidth(line.text, 100) / 100;  // the width of 1px of font size
    let fontSize = measured > 0 ? Math.min(tallest, target / measured) : height * 0.7;
    const squeeze = fontSize < smallest;
    if (squeeze) fontSize = smallest;
    const x = centre[0] - target / 2;
    const text = svg("text", {class: "box-text", "data-index": String(index),
      x: x.toFixed(1), y: centre[1].toFixed(1), "font-size": fontSize.toFixed(1),
      "dominant-baseline": "central",
      transform: `rotate(${angle.toFixed(2)} ${centre[0].toFixed(1)} ${centre[1].toFixed(1)})`});
    text.textContent = line.text;
    if (squeeze) {
      text.setAttribute("textLength", target.toFixed(1));
      text.setAttribute("lengthAdjust", "spacingAndGlyphs");
    }
    return text;
  }

  // The text's width in the page's font, measured on a canvas (which needs no layout, so it
  // works while the view is hidden too).
  let measuring = null;
  let measuringFont = "";
  function textWidth(text, fontSize) {
    if (!measuring) {
      measuring = document.createElement("canvas").getContext("2d");
      measuringFont = getComputedStyle(document.body).fontFamily;
    }
    if (!measuring) return 0;
    measuring.font = `${fontSize}px ${measuringFont}`;
    return measuring.measureText(text).width;
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
    if (!shown) $("stage-note").hidden = true;
  }

  function showBlankStage(width, height) {
    $("stage").classList.add("no-preview");
    $("picture").hidden = true;
    sizeStage(width, height);
    showStage(true);
  }

  function setStageNote(kind) {
    const note = $("stage-note");
    const texts = {
      document: "Reconstructed page: the server's boxes, each with its text, drawn to scale " +
        "on a blank page of the page's size (a browser renders neither PDF nor TIFF pages).",
      image: "This browser cannot display this image: its boxes, each with its text, are " +
        "drawn to scale on a blank page of its size.",
    };
    note.textContent = texts[kind] || "";
    note.hidden = !texts[kind];
  }

  function listLines(lines, emptyText) {
    const list = $("lines");
    list.replaceChildren(...lines.map((line, index) => {
      const item = el("li", {class: "line", tabindex: "0", "data-index": String(index)});
      const confidence = Number(line.confidence);
      const known = isFinite(confidence);
      const score = el("span", {class: "line-score" + (known && confidence < 0.8 ? " low" : ""),
        title: known ? "confidence " + confidence.toFixed(5) : "no confidence (text layer)"},
      known ? (confidence * 100).toFixed(1) + "%" : "");
      item.append(el("span", {class: "line-number"}, String(index + 1)),
        el("span", {class: "line-text"}, line.text), score);
      return item;
    }));
    $("line-count").textContent = lines.length === 1 ? "1 line" : lines.length + " lines";
    $("lines-empty").hidden = lines.length > 0;
    if (lines.length === 0) $("lines-empty").textContent = emptyText;
    list.scrollTop = 0;
  }

  const chip = (text, kind = "", title = "") => {
    const node = el("span", {class: "chip " + kind}, text);
    if (title) node.title = title;
    return node;
  };

  function summarise(result, lines, roundTripMs) {
    const chips = $("chips");
    chips.replaceChildren(
      chip(result.cached ? "from the cache" : "fresh run", result.cached ? "cached" : "fresh"),
      chip(result.model || "model ?"),
      chip(`${result.width} × ${result.height} px`),
      chip(lines.length === 1 ? "1 line" : lines.length + " lines"),
      ...timeChips(result, roundTripMs),
    );
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

  function summariseDocument(result, page, roundTripMs) {
    const kind = (result.kind || "document").toUpperCase();
    const count = result.page_count || (state.pages || []).length;
    const chips = [
      chip(result.cached ? "from the cache" : "fresh run", result.cached ? "cached" : "fresh",
        result.cached ? "every page came from the cache" : ""),
      chip(result.model || "model ?"),
      chip(`${kind} · ${count === 1 ? "1 page" : count + " pages"}`),
    ];
    if (page) {
      const lines = Array.isArray(page.lines) ? page.lines : [];
      chips.push(chip(`${page.width} × ${page.height} px`, "", "this page, as it was read"),
        chip(lines.length === 1 ? "1 line" : lines.length + " lines", "", "on this page"));
      if (page.source === "text_layer") chips.push(chip("text layer", "source", "this page's own text, not OCR"));
    }
    $("chips").replaceChildren(...chips, ...timeChips(result, roundTripMs));
    $("chips").hidden = false;
    $("timings").hidden = true;
  }

  function timeChips(result, roundTripMs) {
    const chips = [];
    if (typeof result.elapsed_ms === "number") {
      chips.push(chip("server " + formatMs(result.elapsed_ms), "", "elapsed_ms: the server's time for this request"));
    }
    chips.push(chip("round trip " + formatMs(roundTripMs), "", "as measured by this browser, upload included"));
    return chips;
  }

  function wirePages() {
    const strip = $("page-strip");
    strip.addEventListener("click", (event) => {
      const tile = event.target.closest(".page-tile");
      if (tile) showPage(Number(tile.dataset.pageIndex));
    });
    strip.addEventListener("keydown", (event) => {
      if (!state.pages) return;
      const moves = {ArrowLeft: -1, ArrowUp: -1, ArrowRight: 1, ArrowDown: 1};
      let index = state.pageIndex;
      if (event.key in moves) index += moves[event.key];
      else if (event.key === "Home") index = 0;
      else if (event.key === "End") index = state.pages.length - 1;
      else return;
      event.preventDefault();
      showPage(index);
      const tile = strip.querySelector(`[data-page-index="${state.pageIndex}"]`);
      if (tile) tile.focus();
    });
    $("page-prev").addEventListener("click", () => showPage(state.pageIndex - 1));
    $("page-next").addEventListener("click", () => showPage(state.pageIndex + 1));
  }

  // ------------------------------------------------------------------ a line and its box

  function setActive(index, scroll) {
    if (index === state.active) return;
    const previous = state.active;
    state.active = index;
    const view = $("view-read");
    for (const node of view.querySelectorAll(`[data-index="${previous}"]`)) node.classList.remove("active");
    if (index < 0) return;
    for (const node of view.querySelectorAll(`[data-index="${index}"]`)) node.classList.add("active");
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

  // The server's error in the message box `target` (the Read view's, or the Jobs view's).
  function showError(error, target = "message") {
    const hints = {
      unauthorized: "Paste the server's API token under “API token” at the top right.",
      queue_full: "The server is busy.",
      unavailable: "No OCR worker is running right now.",
      shutting_down: "The server is restarting or stopping.",
      password_required: "Give the PDF's password under “PDF and TIFF pages”, then “Read again”.",
      wrong_password: "Check the password under “PDF and TIFF pages”, then “Read again”.",
      too_many_pages: "Choose fewer pages under “PDF and TIFF pages”? The limit counts the " +
        "whole document.",
      image_too_large: "For a PDF, a lower resolution under “PDF and TIFF pages” may do.",
      forbidden_path: "The folder must be inside one of the server's filename roots.",
      job_finished: "It finished before the cancel arrived.",
      network_error: "",
    };
    if (error.code === "unauthorized") {
      setTokenState("needed");
      $("token-panel").open = true;
    }
    if (["password_required", "wrong_password", "too_many_pages"].includes(error.code) &&
        target === "message") {
      $("document-options-panel").open = true;
      if (error.code !== "too_many_pages") $("opt-password")?.focus();
    }
    let hint = hints[error.code] || "";
    if (error.retryAfter) hint += (hint ? " " : "") + `Try again in ${error.retryAfter} s.`;
    showMessage(target, error.code + (error.status ? ` · HTTP ${error.status}` : ""),
      error.message || "", hint, "error");
  }

  function showMessage(target, title, text, hint, kind) {
    const box = $(target);
    box.className = "message " + kind;
    box.querySelector(".message-title").textContent = title;
    box.querySelector(".message-text").textContent = text;
    const hintNode = box.querySelector(".message-hint");
    hintNode.textContent = hint;
    hintNode.hidden = !hint;
    box.hidden = false;
  }

  function hideMessage(target) { $(target).hidden = true; }

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
    const text = state.result.text ?? (state.result.lines || []).map((line) => line.text).join("\n");
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
    const pages = state.pages ? state.pages.length : 0;
    toast(pages > 1 ? `Text of ${pages} pages copied` : "Text copied");
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const link = el("a", {href: url, download: name});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function downloadJson() {
    if (!state.result) return;
    const blob = new Blob([JSON.stringify(state.result, null, 2) + "\n"], {type: "application/json"});
    const base = (state.file && state.file.name ? state.file.name : "image").replace(/\.[^.]*$/, "");
    saveBlob(blob, base + ".ocr.json");
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
      hideMessage("jobs-message");
      loadSettings();
    });
    $("token-forget").addEventListener("click", () => {
      input.value = "";
      try { localStorage.removeItem(TOKEN_KEY); } catch { /* storage off: nothing kept */ }
      toast("Token removed from this browser");
      loadSettings();
    });
  }

  // ------------------------------------------------------------------ jobs

  function jobsEnabled() {
    return Boolean(state.settings && state.settings.jobs && state.settings.jobs.enabled);
  }

  function renderJobForms() {
    const jobs = state.settings && state.settings.jobs;
    const enabled = jobsEnabled();
    const folders = enabled && jobs.folders;
    for (const node of $("folder-job-form").elements) node.disabled = !folders;
    $("folder-jobs-off").hidden = !enabled || folders;
    $("job-patterns").placeholder = jobs ? jobs.default_patterns.join(", ") : "";
    $("zip-input").disabled = !enabled;
    $("zip-job-start").disabled = !enabled || !state.jobs.zip;
    if (state.settings && !enabled) {
      showMessage("jobs-message", "Jobs are off on this server",
        "It runs without a job store, so /jobs answers 404.", "", "error");
    }
    if (!state.settings) $("jobs-empty").textContent = "The jobs appear here once the server " +
      "has answered (with an API token where it needs one).";
    updateJobOptionsNote();
  }

  function updateJobOptionsNote() {
    const chosen = jobOptions();
    const model = chosen.model;
    delete chosen.model;
    const note = $("job-options-note");
    const parts = Object.entries(chosen).map(([name, value]) => `${name} ${value}`);
    const link = el("a", {href: "#read"}, "Read");
    note.replaceChildren(
      "Jobs read with " + (model ? "the model " + model : "the default model") +
      (parts.length ? " and " + parts.join(", ") : " and the server's default options") +
      ", as set on the ", link, " tab.");
  }

  async function loadJobs() {
    clearTimeout(state.jobs.timer);
    if (!jobsEnabled()) return;
    const jobs = state.jobs;
    const loading = api(`jobs?limit=${JOBS_PER_PAGE}&offset=${jobs.offset}`);
    jobs.loading = loading;
    let page;
    try {
      page = await loading;
    } catch (error) {
      if (jobs.loading !== loading) return;
      jobs.failed = true;
      showError(error, "jobs-message");
      return;  // no more polling until something asks again
    }
    if (jobs.loading !== loading) return;  // a newer load is under way
    if (jobs.failed) hideMessage("jobs-message");
    jobs.failed = false;
    if (page.jobs.length === 0 && jobs.offset > 0 && page.total > 0) {
      jobs.offset = Math.max(0, Math.floor((page.total - 1) / JOBS_PER_PAGE) * JOBS_PER_PAGE);
      loadJobs();
      return;
    }
    jobs.list = page.jobs;
    jobs.total = page.total;
    renderJobs();
    await refreshOpenDetails();
    scheduleJobsPoll();
  }

  function scheduleJobsPoll() {
    const jobs = state.jobs;
    clearTimeout(jobs.timer);
    if (jobs.failed || !jobs.list.some((job) => ACTIVE_JOB.has(job.status))) return;
    const shown = currentView() === "jobs" && !document.hidden;
    jobs.timer = setTimeout(loadJobs, shown ? JOBS_POLL_MS : JOBS_POLL_HIDDEN_MS);
  }

  function renderJobs() {
    const jobs = state.jobs;
    const list = $("jobs-list");
    const cards = new Map([...list.children].map((card) => [card.dataset.jobId, card]));
    const ordered = jobs.list.map((job) => {
      const card = cards.get(job.id) || jobCard(job);
      updateJobCard(card, job);
      return card;
    });
    // Moving a node loses its focus: only rebuild the list when its order changed.
    const same = ordered.length === list.children.length &&
      ordered.every((card, i) => list.children[i] === card);
    if (!same) list.replaceChildren(...ordered);
    const shownIds = new Set(jobs.list.map((job) => job.id));
    for (const id of [...jobs.details]) if (!shownIds.has(id)) jobs.details.delete(id);
    $("jobs-count").textContent = jobs.total ? (jobs.total === 1 ? "1 job" : jobs.total + " jobs") : "";
    $("jobs-empty").hidden = jobs.list.length > 0;
    $("jobs-empty").textContent = "No jobs yet. Start one with a folder on the server or a " +
      "ZIP: its progress shows here while it runs, and its results can be exported as JSON, " +
      "JSON lines, CSV or text.";
    $("jobs-newer").hidden = jobs.offset === 0;
    $("jobs-older").hidden = jobs.offset + jobs.list.length >= jobs.total;
    const running = jobs.list.filter((job) => ACTIVE_JOB.has(job.status)).length;
    const badge = $("jobs-badge");
    badge.hidden = running === 0;
    badge.textContent = String(running);
    badge.title = running === 1 ? "1 job running or waiting" : running + " jobs running or waiting";
  }

  function jobCard(job) {
    const card = el("li", {class: "job", "data-job-id": job.id});
    const top = el("div", {class: "job-top"});
    top.append(el("span", {class: "job-source"}), el("span", {class: "job-name"}),
      el("span", {class: "job-status"}));
    const progress = el("div", {class: "job-progress"});
    const bar = el("div", {class: "progress", role: "progressbar", "aria-valuemin": "0"});
    bar.append(el("span", {class: "progress-done"}), el("span", {class: "progress-failed"}));
    progress.append(bar, el("span", {class: "progress-figure"}));
    const actions = el("div", {class: "job-actions"});
    const exports = el("div", {class: "exports"});
    exports.append(el("span", {class: "exports-label"}, "Export"));
    for (const [format, label, title] of EXPORTS) {
      const link = el("a", {class: "export", "data-format": format, title,
        href: `jobs/${job.id}/results?format=${format}`, download: `job-${job.id}.${format}`}, label);
      exports.append(link);
    }
    const buttons = el("div", {class: "row job-buttons"});
    buttons.append(
      el("button", {type: "button", class: "button quiet job-details-toggle", "aria-expanded": "false"}, "Details"),
      el("button", {type: "button", class: "button job-cancel"}, "Cancel"),
      el("button", {type: "button", class: "button job-delete"}, "Delete"));
    actions.append(exports, buttons);
    card.append(top, progress, el("div", {class: "job-facts"}),
      el("div", {class: "job-error"}), actions, el("div", {class: "job-details", hidden: ""}));
    return card;
  }

  function updateJobCard(card, job) {
    const part = (name) => card.querySelector("." + name);
    card.dataset.status = job.status;
    part("job-source").textContent = job.source === "zip" ? "ZIP" : "Folder";
    part("job-name").textContent = job.name || job.id;
    part("job-name").title = job.name || "";
    const status = part("job-status");
    status.textContent = STATUS_LABELS[job.status] || job.status;
    status.className = "job-status status-" + job.status;
    const finished = job.done + job.failed;
    const total = Math.max(job.total, finished);
    const bar = part("progress");
    // A running job whose files are still being counted has no fraction to show yet.
    bar.classList.toggle("indeterminate", total === 0 && ACTIVE_JOB.has(job.status));
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(finished));
    bar.setAttribute("aria-label", `${job.name || "job"}: ${finished} of ${total} read`);
    part("progress-done").style.width = total ? (100 * job.done / total).toFixed(2) + "%" : "0";
    part("progress-failed").style.width = total ? (100 * job.failed / total).toFixed(2) + "%" : "0";
    part("progress-figure").textContent = total ? Math.floor(100 * finished / total) + "%" : "–";
    const facts = [`${finished} of ${total} ${total === 1 ? "item" : "items"} read`];
    if (job.cached) facts.push(`${job.cached} from the cache`);
    if (job.failed) facts.push(`${job.failed} failed`);
    if (job.skipped_symlinks) facts.push(`${job.skipped_symlinks} links skipped`);
    if (job.status === "running" && typeof job.eta_s === "number") facts.push(formatEta(job.eta_s));
    facts.push(jobTimes(job));
    part("job-facts").replaceChildren(...facts.map((fact) =>
      el("span", {class: "fact" + (fact.endsWith(" failed") ? " failed" : "")}, fact)));
    part("job-error").textContent = job.error || "";
    part("job-error").hidden = !job.error;
    part("job-cancel").hidden = !ACTIVE_JOB.has(job.status);
    for (const link of card.querySelectorAll(".export")) {
      link.classList.toggle("disabled", finished === 0);
      link.setAttribute("aria-disabled", String(finished === 0));
    }
    card.querySelector(".exports-label").textContent = ACTIVE_JOB.has(job.status) && finished ?
      "Export so far" : "Export";
  }

  function jobTimes(job) {
    const when = (iso) => formatTime(new Date(iso));
    if (job.finished_at) {
      const verb = {done: "finished", failed: "failed", cancelled: "cancelled"}[job.status] || "ended";
      const took = job.started_at ? (job.status === "done" ? " · took " : " · after ") + formatDuration((Date.parse(job.finished_at) -
        Date.parse(job.started_at)) / 1000) : "";
      return `${verb} ${when(job.finished_at)}${took}`;
    }
    if (job.started_at) return "started " + when(job.started_at);
    return "added " + when(job.created_at);
  }

  async function refreshOpenDetails() {
    await Promise.all([...state.jobs.details].map((id) => loadDetails(id)));
  }

  async function loadDetails(id) {
    const card = $("jobs-list").querySelector(`[data-job-id="${id}"]`);
    if (!card) return;
    let job;
    try {
      job = await api("jobs/" + encodeURIComponent(id));
    } catch (error) {
      showError(error, "jobs-message");
      return;
    }
    const details = card.querySelector(".job-details");
    const recent = Array.isArray(job.recent) ? job.recent : [];
    const rows = recent.map((item) => {
      const row = el("li", {class: "recent-item" + (item.status === "failed" ? " failed" : "")});
      const where = el("span", {class: "recent-file"}, item.file + (item.page > 1 ? ` · page ${item.page}` : ""));
      let what;
      if (item.error) what = `${item.error.code}: ${item.error.message}`;
      else if (item.status === "done") what = (item.lines === 1 ? "1 line" : item.lines + " lines") + (item.cached ? " · cached" : "");
      else what = STATUS_LABELS[item.status] || item.status;
      row.append(where, el("span", {class: "recent-what"}, what));
      return row;
    });
    const heading = el("p", {class: "hint recent-head"}, recent.length ?
      "The last items read:" : "No item has been read yet.");
    // The options this job reads with that differ from the server's defaults.
    const defaults = Object.fromEntries(((state.settings && state.settings.options) || [])
      .map((option) => [option.name, String(option.default)]));
    const changed = Object.entries(job.options || {})
      .filter(([name, value]) => defaults[name] !== String(value))
      .map(([name, value]) => `${name} ${value}`);
    const facts = el("p", {class: "hint recent-head"}, `Model ${job.model} · ` +
      (changed.length ? changed.join(", ") : "the server's default options") + ` · job ${job.id}`);
    details.replaceChildren(facts, heading, el("ol", {class: "recent"}));
    details.querySelector(".recent").replaceChildren(...rows);
  }

  function wireJobs() {
    const list = $("jobs-list");
    list.addEventListener("click", async (event) => {
      const card = event.target.closest(".job");
      if (!card) return;
      const id = card.dataset.jobId;
      const exportLink = event.target.closest(".export");
      if (exportLink) {
        event.preventDefault();
        if (exportLink.classList.contains("disabled")) return;
        exportResults(id, exportLink.dataset.format, exportLink);
        return;
      }
      const button = event.target.closest("button");
      if (!button) return;
      if (button.classList.contains("job-details-toggle")) {
        const details = card.querySelector(".job-details");
        const open = details.hidden;
        details.hidden = !open;
        button.setAttribute("aria-expanded", String(open));
        if (open) { state.jobs.details.add(id); loadDetails(id); } else state.jobs.details.delete(id);
      } else if (button.classList.contains("job-cancel")) {
        button.disabled = true;
        try {
          await api(`jobs/${id}/cancel`, {method: "POST"});
          toast("Job cancelled");
        } catch (error) {
          showError(error, "jobs-message");
        } finally {
          button.disabled = false;
        }
        loadJobs();
      } else if (button.classList.contains("job-delete")) {
        // Two clicks: the first asks, the second (within a few seconds) deletes.
        if (!button.classList.contains("confirm")) {
          button.classList.add("confirm");
          button.textContent = "Delete for good?";
          setTimeout(() => {
            button.classList.remove("confirm");
            button.textContent = "Delete";
          }, 4000);
          return;
        }
        button.disabled = true;
        try {
          await api("jobs/" + id, {method: "DELETE"});
          card.remove();
          state.jobs.details.delete(id);
          toast("Job deleted");
        } catch (error) {
          showError(error, "jobs-message");
          button.disabled = false;
        }
        loadJobs();
      }
    });
    $("jobs-refresh").addEventListener("click", () => { hideMessage("jobs-message"); loadJobs(); });
    $("jobs-newer").addEventListener("click", () => {
      state.jobs.offset = Math.max(0, state.jobs.offset - JOBS_PER_PAGE);
      loadJobs();
    });
    $("jobs-older").addEventListener("click", () => {
      state.jobs.offset += JOBS_PER_PAGE;
      loadJobs();
    });
    $("folder-job-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const directory = $("job-directory").value.trim();
      if (!directory) {
        showError(new ApiFailure(0, "missing_field", "Name a folder on the server to read."), "jobs-message");
        $("job-directory").focus();
        return;
      }
      const form = new FormData();
      form.append("directory", directory);
      form.append("recursive", String($("job-recursive").checked));
      const patterns = $("job-patterns").value.trim();
      if (patterns) form.append("patterns", patterns);
      for (const [name, value] of Object.entries(jobOptions())) form.append(name, value);
      startJob(form, $("folder-job-start"));
    });
    $("zip-input").addEventListener("change", () => {
      chooseZip($("zip-input").files[0]);
      $("zip-input").value = "";
    });
    $("zip-job-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const zip = state.jobs.zip;
      if (!zip) return;
      const limit = state.settings && state.settings.max_body_size;
      if (limit && zip.size > limit) {
        showError(new ApiFailure(413, "too_large", "The ZIP is " + formatBytes(zip.size) +
          "; this server takes at most " + formatBytes(limit) + " (checked here, before sending)."),
        "jobs-message");
        return;
      }
      const form = new FormData();
      for (const [name, value] of Object.entries(jobOptions())) form.append(name, value);
      form.append("file", zip, zip.name || "upload.zip");
      startJob(form, $("zip-job-start"), () => chooseZip(null));
    });
  }

  function chooseZip(file) {
    state.jobs.zip = file || null;
    const name = $("zip-name");
    name.hidden = !file;
    name.textContent = file ? (file.name || "upload.zip") + " · " + formatBytes(file.size) : "";
    $("zip-job-start").disabled = !file || !jobsEnabled();
  }

  async function startJob(form, button, done) {
    hideMessage("jobs-message");
    button.disabled = true;
    const label = button.textContent;
    button.textContent = "Starting…";
    try {
      const job = await api("jobs", {method: "POST", body: form});
      const count = job.total === 1 ? "1 file" : job.total + " files";
      toast(job.status === "queued" && job.total !== undefined ? `Job started: ${count}` : "Job started");
      if (done) done();
      state.jobs.offset = 0;
      await loadJobs();
      const card = $("jobs-list").querySelector(`[data-job-id="${job.id}"]`);
      if (card) {
        card.classList.remove("flash");
        void card.offsetWidth;  // restarts the animation for a re-submitted job
        card.classList.add("flash");
        card.addEventListener("animationend", () => card.classList.remove("flash"), {once: true});
        card.scrollIntoView({block: "nearest"});
      }
    } catch (error) {
      showError(error, "jobs-message");
    } finally {
      button.textContent = label;
      button.disabled = button.id === "zip-job-start" ? !state.jobs.zip : false;
    }
  }

  async function exportResults(id, format, link) {
    link.classList.add("busy");
    try {
      const response = await send(`jobs/${id}/results?format=${format}`);
      const blob = await response.blob();
      saveBlob(blob, `job-${id}.${format}`);
    } catch (error) {
      showError(error, "jobs-message");
    } finally {
      link.classList.remove("busy");
    }
  }

  // ------------------------------------------------------------------ picking a file

  function firstFile(items) {
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
      const file = firstFile(event.clipboardData && event.clipboardData.items);
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
      $("drop-veil-text").textContent = currentView() === "jobs" ?
        "Drop a ZIP to read it as a job" : "Drop the file to read it";
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
      takeFile(firstFile(event.dataTransfer.files));
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

  function formatDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "–";
    if (seconds < 60) return Math.max(1, Math.round(seconds)) + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.round((seconds % 3600) / 60);
    return hours + " h" + (minutes ? " " + minutes + " min" : "");
  }

  function formatEta(seconds) {
    return seconds < 1 ? "almost done" : "about " + formatDuration(seconds) + " left";
  }

  function formatTime(date) {
    if (isNaN(date)) return "–";
    const today = new Date().toDateString() === date.toDateString();
    return today ? date.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"}) :
      date.toLocaleString([], {day: "numeric", month: "short", hour: "2-digit", minute: "2-digit"});
  }

  // ------------------------------------------------------------------ start

  function start() {
    wireToken();
    wireInput();
    wireHighlighting();
    wirePages();
    wireZoom();
    wireJobs();
    $("options").addEventListener("submit", (event) => { event.preventDefault(); read(); });
    $("options").addEventListener("change", updateJobOptionsNote);
    $("reset").addEventListener("click", resetOptions);
    $("copy").addEventListener("click", copyText);
    $("download").addEventListener("click", downloadJson);
    $("picture").addEventListener("load", () => {
      const picture = $("picture");
      sizeStage(picture.naturalWidth, picture.naturalHeight);
      if (!state.result) $("overlay").setAttribute("viewBox", `0 0 ${picture.naturalWidth} ${picture.naturalHeight}`);
    });
    $("picture").addEventListener("error", () => {
      if (!state.file || state.kind !== "image" || !$("picture").getAttribute("src")) return;
      $("picture").hidden = true;
      // Nothing to show until the server says how big the image is (or that it is none).
      if (state.result && !state.pages) drawBoxes(state.result, state.result.lines || []);
      else if (!state.result) showStage(false);
    });
    window.addEventListener("hashchange", showView);
    document.addEventListener("visibilitychange", scheduleJobsPoll);
    showView();
    loadSettings();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
