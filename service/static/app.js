// The digit recognizer page: draw or upload a digit, send it to /predict, show the answer.
// Plain browser JavaScript, no build step: the page must work from the package, offline.
"use strict";

(() => {
  // White ink on black, like MNIST itself; the server would invert dark-on-light anyway.
  const PAD_COLOUR = "#000000";
  const INK_COLOUR = "#ffffff";
  // About a tenth of the pad: once the server scales the digit to 20 px, strokes come out
  // about as thick as MNIST's pen strokes.
  const BRUSH_WIDTH = 22;
  // Long enough for the next stroke of the same digit to start, short enough to feel instant.
  const PREDICT_DELAY_MS = 400;
  const DIGITS = 10;

  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const dropZone = $("drop-zone");
  const clearButton = $("clear-button");
  const fileInput = $("file-input");
  const result = $("result");
  const answerDigit = $("answer-digit");
  const answerConfidence = $("answer-confidence");
  const confidenceFill = $("confidence-fill");
  const timing = $("timing");
  const status = $("status");
  const errorBox = $("error");
  const errorTitle = $("error-title");
  const errorDetail = $("error-detail");

  const numbers = new Intl.NumberFormat("en-US");

  // --- Drawing ------------------------------------------------------------------------

  let stroke = null; // {pointerId, last, lastMid} while a pointer is down on the pad
  let showingUpload = false;

  function resetPad() {
    ctx.fillStyle = PAD_COLOUR;
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.strokeStyle = INK_COLOUR;
    ctx.fillStyle = INK_COLOUR;
    ctx.lineWidth = BRUSH_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    showingUpload = false;
    dropZone.classList.remove("has-ink");
  }

  function padPoint(event) {
    // The pad is drawn at 280x280 but laid out at whatever size CSS gives it.
    const box = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * pad.width) / box.width,
      y: ((event.clientY - box.top) * pad.height) / box.height,
    };
  }

  const midpoint = (a, b) => ({ x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 });

  function startStroke(event) {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    if (showingUpload) resetPad();
    cancelScheduledPrediction();
    pad.setPointerCapture(event.pointerId);
    const point = padPoint(event);
    stroke = { pointerId: event.pointerId, last: point, lastMid: point };
    ctx.beginPath();
    ctx.arc(point.x, point.y, BRUSH_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
    dropZone.classList.add("has-ink");
    setState("drawing");
  }

  function extendStroke(event) {
    if (!stroke || event.pointerId !== stroke.pointerId) return;
    // Coalesced events carry the points a fast hand made between two frames.
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const sample of events.length ? events : [event]) {
      const point = padPoint(sample);
      // A quadratic curve through the midpoints turns the sampled polyline into a smooth line.
      const mid = midpoint(stroke.last, point);
      ctx.beginPath();
      ctx.moveTo(stroke.lastMid.x, stroke.lastMid.y);
      ctx.quadraticCurveTo(stroke.last.x, stroke.last.y, mid.x, mid.y);
      ctx.stroke();
      stroke.last = point;
      stroke.lastMid = mid;
    }
  }

  function endStroke(event) {
    if (!stroke || event.pointerId !== stroke.pointerId) return;
    ctx.beginPath();
    ctx.moveTo(stroke.lastMid.x, stroke.lastMid.y);
    ctx.lineTo(stroke.last.x, stroke.last.y);
    ctx.stroke();
    stroke = null;
    schedulePrediction();
  }

  pad.addEventListener("pointerdown", startStroke);
  pad.addEventListener("pointermove", extendStroke);
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("lostpointercapture", endStroke);

  // --- The API key, when the service asks for one -----------------------------------

  // sessionStorage: the key lives as long as this tab, and never reaches another site.
  const KEY_STORAGE = "mnist-api-key";
  const keyForm = $("key-form");
  const keyInput = $("key-input");
  const keyMessage = $("key-message");
  let retryAfterKey = null; // what to do again once a key is given

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function askForKey(detail, retry) {
    const refused = sessionStorage.getItem(KEY_STORAGE) !== null;
    sessionStorage.removeItem(KEY_STORAGE);
    keyMessage.textContent = refused
      ? "That key was refused. Check it and try again; it is kept for this browser tab only."
      : "Ask its operator for one. It is kept for this browser tab only.";
    keyForm.dataset.detail = detail || "";
    retryAfterKey = retry;
    keyForm.hidden = false;
    keyInput.focus();
  }

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    keyInput.value = "";
    keyForm.hidden = true;
    const retry = retryAfterKey;
    retryAfterKey = null;
    loadSummary();
    if (retry) retry();
  });

  // --- Talking to /predict ------------------------------------------------------------

  let timer = null;
  let requestSeq = 0; // only the newest request may change what the page shows
  let inFlight = null;

  function cancelScheduledPrediction() {
    clearTimeout(timer);
    timer = null;
  }

  function schedulePrediction() {
    cancelScheduledPrediction();
    setState("pending");
    timer = setTimeout(() => {
      timer = null;
      pad.toBlob((blob) => {
        if (blob) {
          predict(blob, "drawing.png");
        } else {
          showError("The drawing could not be saved", "Clear the pad and draw again.");
        }
      }, "image/png");
    }, PREDICT_DELAY_MS);
  }

  function cancelRequests() {
    cancelScheduledPrediction();
    requestSeq += 1;
    if (inFlight) inFlight.abort();
    inFlight = null;
  }

  async function predict(image, filename) {
    cancelRequests();
    const seq = requestSeq;
    const controller = new AbortController();
    inFlight = controller;
    setState("pending");
    const form = new FormData();
    form.append("file", image, filename);
    const started = performance.now();
    let response;
    let body = null;
    try {
      response = await fetch("/predict", {
        method: "POST",
        body: form,
        headers: { Accept: "application/json", ...authHeaders() },
        signal: controller.signal,
      });
      body = await response.json().catch(() => null);
    } catch (error) {
      if (seq !== requestSeq) return;
      showError(
        "The service cannot be reached",
        "Check that it is running and that this page comes from it, then try again."
      );
      return;
    }
    if (seq !== requestSeq) return;
    inFlight = null;
    const detail = body && typeof body.detail === "string" ? body.detail : null;
    if (response.status === 401) {
      showError("This service takes an API key", "Enter one above; the digit is read again.");
      askForKey(detail, () => predict(image, filename));
      return;
    }
    if (!response.ok) {
      showError(errorTitleFor(response.status), detail || `The service answered HTTP ${response.status}.`);
      return;
    }
    const prediction = body && Array.isArray(body.predictions) ? body.predictions[0] : null;
    if (!prediction || !Array.isArray(prediction.probabilities)) {
      showError("The answer was not understood", "The service sent no prediction; try again.");
      return;
    }
    showPrediction(prediction, performance.now() - started, String(body.model_version));
    // A new version was rolled out since the page loaded: show what answers now.
    if (body.model_version !== undefined && String(body.model_version) !== servingVersion) {
      loadSummary();
    }
  }

  function errorTitleFor(code) {
    if (code === 413) return "That image is too large";
    if (code === 415) return "That file type is not supported";
    if (code === 400) return "That file could not be read";
    if (code === 403) return "That key may not do this";
    if (code === 503) return "The service is busy";
    if (code >= 500) return "Something went wrong on the server";
    return "The model could not read that";
  }

  // --- Showing the answer -------------------------------------------------------------

  const bars = buildBars();

  function buildBars() {
    const list = $("bars");
    const rows = [];
    for (let digit = 0; digit < DIGITS; digit += 1) {
      const row = document.createElement("li");
      row.className = "bar-row";
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = String(digit);
      label.setAttribute("aria-hidden", "true");
      const track = document.createElement("div");
      track.className = "bar-track";
      track.setAttribute("role", "meter");
      track.setAttribute("aria-label", `Digit ${digit}`);
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      const fill = document.createElement("div");
      fill.className = "bar-fill";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.setAttribute("aria-hidden", "true");
      row.append(label, track, value);
      list.append(row);
      rows.push({ row, track, fill, value });
    }
    return rows;
  }

  function percent(probability) {
    // Rounding would claim a certainty of 100% or 0% that the softmax never reaches.
    if (probability > 0 && probability < 0.0005) return "<0.1%";
    if (probability < 1 && probability >= 0.9995) return ">99.9%";
    return `${(probability * 100).toFixed(1)}%`;
  }

  function setBars(probabilities, top) {
    bars.forEach((bar, digit) => {
      const probability = probabilities ? Number(probabilities[digit]) || 0 : 0;
      bar.fill.style.width = `${Math.max(0, Math.min(1, probability)) * 100}%`;
      bar.value.textContent = probabilities ? percent(probability) : "";
      bar.track.setAttribute("aria-valuenow", (probability * 100).toFixed(1));
      bar.track.setAttribute("aria-valuetext", probabilities ? percent(probability) : "no answer yet");
      bar.row.classList.toggle("top", digit === top);
    });
  }

  function setState(state) {
    result.dataset.state = state;
  }

  function showPrediction(prediction, elapsedMs, version) {
    const confidence = Number(prediction.confidence);
    hideError();
    answerDigit.textContent = String(prediction.digit);
    answerConfidence.textContent = `${percent(confidence)} confident`;
    confidenceFill.style.width = `${confidence * 100}%`;
    timing.textContent = `Answered in ${Math.round(elapsedMs)} ms by model version ${version}`;
    setBars(prediction.probabilities, prediction.digit);
    status.textContent = `Predicted digit ${prediction.digit}, ${percent(confidence)} confident.`;
    setState(timer ? "pending" : "done");
  }

  function showEmpty() {
    hideError();
    answerDigit.textContent = "–";
    answerConfidence.textContent = "Waiting for a digit";
    confidenceFill.style.width = "0";
    timing.textContent = "";
    setBars(null, -1);
    status.textContent = "Cleared.";
    setState("empty");
  }

  function showError(title, detail) {
    answerDigit.textContent = "?";
    answerConfidence.textContent = "No answer";
    confidenceFill.style.width = "0";
    timing.textContent = "";
    setBars(null, -1);
    errorTitle.textContent = title;
    // The service's messages start in lower case, to fit inside longer sentences.
    errorDetail.textContent = detail.charAt(0).toUpperCase() + detail.slice(1);
    errorBox.hidden = false;
    status.textContent = "";
    setState("error");
  }

  function hideError() {
    errorBox.hidden = true;
  }

  // --- Clear and upload ---------------------------------------------------------------

  clearButton.addEventListener("click", () => {
    cancelRequests();
    resetPad();
    showEmpty();
  });

  async function previewUpload(file) {
    resetPad();
    try {
      const bitmap = await createImageBitmap(file);
      const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
      const width = bitmap.width * scale;
      const height = bitmap.height * scale;
      ctx.imageSmoothingEnabled = scale < 1;
      ctx.drawImage(bitmap, (pad.width - width) / 2, (pad.height - height) / 2, width, height);
      bitmap.close();
      dropZone.classList.add("has-ink");
    } catch {
      // Not an image the browser can show: the service will say what is wrong with it.
    }
    // The next stroke starts a fresh drawing rather than scribbling over the upload.
    showingUpload = true;
  }

  function readFile(file) {
    cancelRequests();
    previewUpload(file);
    // The original file, not the preview: the service sees exactly what the user chose.
    predict(file, file.name || "upload");
  }

  fileInput.addEventListener("change", () => {
    const [file] = fileInput.files;
    if (file) readFile(file);
    // Choosing the same file again must still fire a change.
    fileInput.value = "";
  });

  const carriesFiles = (event) =>
    event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");

  dropZone.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  dropZone.addEventListener("dragleave", (event) => {
    if (!dropZone.contains(event.relatedTarget)) dropZone.classList.remove("dragging");
  });
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    const [file] = event.dataTransfer ? event.dataTransfer.files : [];
    if (file) {
      readFile(file);
    } else {
      showError("Nothing to read", "Drop an image file, such as a PNG or a JPEG.");
    }
  });
  // A file dropped beside the pad must not make the browser navigate away to it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (carriesFiles(event) && !dropZone.contains(event.target)) event.preventDefault();
    });
  }

  // --- The model panel ----------------------------------------------------------------

  const PROVIDERS = {
    CUDAExecutionProvider: "NVIDIA GPU (CUDA)",
    TensorrtExecutionProvider: "NVIDIA GPU (TensorRT)",
    CPUExecutionProvider: "CPU",
  };

  function shapeCell(shape) {
    // Keras' notation, with the batch dimension in its own span so narrow screens can drop it.
    const [batch, ...rest] = shape.map((d) => (d === null ? "None" : String(d)));
    const td = cell("td", undefined, "shape");
    td.append("(", cell("span", rest.length ? `${batch}, ` : batch, "shape-batch"), `${rest.join(", ")})`);
    return td;
  }

  function cell(tag, text, className) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function renderSummary(data) {
    const { summary, model_card: card = {}, providers = [] } = data;
    const body = $("layers-body");
    body.replaceChildren(
      ...summary.layers.map((layer) => {
        const row = document.createElement("tr");
        const name = cell("th");
        name.scope = "row";
        name.append(cell("span", layer.name, "layer-name"), " ", cell("span", `(${layer.type})`, "layer-type"));
        row.append(name, shapeCell(layer.output_shape), cell("td", numbers.format(layer.params), "num"));
        return row;
      })
    );
    $("total-params").textContent = numbers.format(summary.total_params);
    $("fact-params").textContent = numbers.format(summary.total_params);
    $("fact-model").textContent = data.model;
    servingVersion = String(data.model_version);
    $("fact-version").textContent = servingVersion;
    const accuracy = Number(card.test_accuracy);
    const tested = card.test_size ? ` on ${numbers.format(card.test_size)} digits` : "";
    $("fact-accuracy").textContent = Number.isFinite(accuracy)
      ? `${(accuracy * 100).toFixed(2)}%${tested}`
      : "not recorded";
    const provider = providers[0] || "unknown";
    const runsOn = PROVIDERS[provider] || provider;
    const providerFact = $("fact-provider");
    providerFact.textContent = `${runsOn} · onnxruntime`;
    providerFact.title = providers.join(", ");
    $("model-badge-text").textContent = `Model version ${servingVersion} ready on ${runsOn}`;
    $("model-badge").hidden = false;
  }

  let servingVersion = null;

  async function loadSummary() {
    const problem = $("summary-error");
    try {
      const response = await fetch("/summary", {
        headers: { Accept: "application/json", ...authHeaders() },
      });
      const body = await response.json().catch(() => null);
      if (response.status === 401) {
        askForKey(body && body.detail, retryAfterKey);
        return;
      }
      if (!response.ok || !body || !body.summary) {
        const detail = body && body.detail ? body.detail : `HTTP ${response.status}`;
        throw new Error(detail);
      }
      problem.hidden = true;
      renderSummary(body);
    } catch (error) {
      problem.textContent = `The model's summary could not be loaded (${error.message}). Reload the page to try again.`;
      problem.hidden = false;
    }
  }

  resetPad();
  showEmpty();
  status.textContent = "";
  loadSummary();
})();
