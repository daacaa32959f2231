// The demo page's only script (an ES module, no build step). It uploads the chosen image with its
// remove-bg options through the Product API (session authentication and the CSRF token from the
// page), then polls the job with If-None-Match (304 while nothing changed) until it finishes, and
// shows the original and the cut-out side by side with a slider.

const root = document.getElementById("demo");
const productsUrl = root.dataset.productsUrl;
const csrfToken = root.dataset.csrfToken;

const form = document.getElementById("upload-form");
const uploadButton = document.getElementById("upload-button");
const formErrors = document.getElementById("form-errors");
const badge = document.getElementById("status");
const statusDetail = document.getElementById("status-detail");
const timeline = document.getElementById("timeline");
const jobError = document.getElementById("job-error");
const productLink = document.getElementById("product-link");
const jobLink = document.getElementById("job-link");
const againButton = document.getElementById("again");
const retryButton = document.getElementById("retry");
const compare = document.getElementById("compare");
const compareEmpty = document.getElementById("compare-empty");
const before = document.getElementById("before");
const after = document.getElementById("after");
const slider = document.getElementById("slider");
const afterLegend = document.getElementById("after-legend");

const POLL_MS = 800;
const POLL_MAX_MS = 4000;

let product = null; // the product as the API last returned it
let job = null; // the job being watched
let watchToken = 0; // a newer watch makes older loops stop
let startedAt = performance.now();
let previewUrl = null;

// ------------------------------------------------------------------ requests

async function api(url, { method = "GET", body, headers = {} } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    cache: "no-store",
    headers: { Accept: "application/json", ...headers },
  };
  if (method !== "GET") {
    init.headers["X-CSRFToken"] = csrfToken;
  }
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  let data = null;
  if (response.status !== 204 && response.status !== 304) {
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { detail: text.slice(0, 200) };
    }
  }
  return { response, data };
}

function chosenOptions() {
  const data = new FormData(form);
  const options = {
    add_shadow: data.get("add_shadow") === "on",
    semitransparency: data.get("semitransparency") === "on",
    bg_color: null,
    bg_image_url: null,
  };
  const background = data.get("background");
  if (background === "color") {
    options.bg_color = String(data.get("bg_color") || "").replace("#", "");
  } else if (background === "image") {
    options.bg_image_url = String(data.get("bg_image_url") || "").trim();
  }
  return options;
}

// ------------------------------------------------------------------ rendering

const LABELS = { name: "Product name", photo: "Image", photo_options: "Options", options: "Options" };

function errorList(data) {
  // DRF's errors: {"detail": ...}, or per field (options per option, whose messages name the
  // option already): one readable line each.
  const items = [];
  const walk = (value, path) => {
    if (Array.isArray(value)) {
      value.forEach((item) => walk(item, path));
    } else if (value && typeof value === "object") {
      for (const [key, inner] of Object.entries(value)) {
        if (key === "code") continue;
        const label = key === "detail" || key === "non_field_errors" ? path : [...path, key];
        walk(inner, label);
      }
    } else if (value !== null && value !== undefined) {
      const message = String(value);
      const names = path.filter((key, i) => i === 0 || !message.startsWith(key));
      const label = names.map((key) => LABELS[key] || key.replaceAll("_", " ")).join(" › ");
      items.push(label ? `${label}: ${message}` : message);
    }
  };
  walk(data, []);
  return items.length ? items : ["Something went wrong."];
}

function showFormErrors(data) {
  formErrors.replaceChildren();
  if (!data) {
    formErrors.hidden = true;
    return;
  }
  const list = document.createElement("ul");
  for (const message of errorList(data)) {
    const item = document.createElement("li");
    item.textContent = message;
    list.append(item);
  }
  formErrors.append(list);
  formErrors.hidden = false;
}

function setStatus(status, label, detail = "") {
  if (badge.dataset.status !== status) {
    const item = document.createElement("li");
    const when = document.createElement("time");
    when.textContent = `${((performance.now() - startedAt) / 1000).toFixed(1)} s`;
    item.append(when, label);
    timeline.append(item);
  }
  badge.dataset.status = status;
  badge.textContent = label;
  statusDetail.textContent = detail;
}

function setLink(anchor, url) {
  anchor.hidden = !url;
  if (url) anchor.href = url;
}

function showBefore(src) {
  compareEmpty.hidden = true;
  compare.hidden = false;
  before.src = src;
}

function showAfter(src) {
  after.src = src;
  after.hidden = false;
  afterLegend.hidden = false;
  slider.disabled = false;
  compare.classList.add("ready");
}

function hideAfter() {
  after.hidden = true;
  afterLegend.hidden = true;
  after.removeAttribute("src");
  slider.disabled = true;
  compare.classList.remove("ready");
}

function renderJob(current) {
  job = current;
  setLink(jobLink, current.url);
  const detail = current.finished ? "" : "checking for changes…";
  setStatus(current.status, current.status_display, detail);
  jobError.hidden = current.status !== "failed";
  jobError.textContent = current.error_message || "";
  retryButton.hidden = current.status !== "failed" || current.retried_as !== null;
  againButton.hidden = !current.finished;
  if (current.status === "succeeded") {
    showAfter(current.result_file_url || current.result_url);
  }
}

// ------------------------------------------------------------------ watching a job

function wait(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function watch(jobUrl) {
  const token = ++watchToken;
  let etag = null;
  let delay = POLL_MS;
  hideAfter();
  setLink(jobLink, jobUrl);
  while (token === watchToken) {
    const headers = etag ? { "If-None-Match": etag } : {};
    let result;
    try {
      result = await api(jobUrl, { headers });
    } catch (error) {
      statusDetail.textContent = `connection lost, trying again (${error.message})`;
      await wait(POLL_MAX_MS);
      continue;
    }
    if (token !== watchToken) return;
    const { response, data } = result;
    if (response.status === 304) {
      delay = Math.min(POLL_MAX_MS, Math.round(delay * 1.25)); // unchanged: ask less often
    } else if (response.ok) {
      etag = response.headers.get("ETag");
      delay = POLL_MS;
      renderJob(data);
      if (data.finished) return;
    } else {
      setStatus("failed", `Error ${response.status}`, errorList(data).join(" "));
      return;
    }
    await wait(delay);
  }
}

// ------------------------------------------------------------------ actions

async function upload(event) {
  event.preventDefault();
  showFormErrors(null);
  const file = form.elements.photo.files[0];
  const name = form.elements.name.value.trim();
  if (!file || !name) {
    showFormErrors({ detail: !file ? "Choose an image first." : "Give the product a name." });
    return;
  }
  const body = new FormData();
  body.append("name", name);
  body.append("photo", file);
  body.append("photo_options", JSON.stringify(chosenOptions()));
  uploadButton.disabled = true;
  timeline.replaceChildren();
  startedAt = performance.now();
  setStatus("uploading", "Uploading", file.name);
  try {
    const { response, data } = await api(productsUrl, { method: "POST", body });
    if (response.status !== 201) {
      setStatus("idle", "Not uploaded");
      showFormErrors(data);
      return;
    }
    product = data;
    setLink(productLink, product.url);
    if (product.photo) {
      showBefore(product.photo.url);
      if (product.photo.job) {
        await watch(product.photo.job);
      }
    }
  } catch (error) {
    showFormErrors({ detail: `The upload failed: ${error.message}` });
    setStatus("idle", "Not uploaded");
  } finally {
    uploadButton.disabled = false;
  }
}

async function startAgain(url, body) {
  againButton.disabled = retryButton.disabled = true;
  try {
    const { response, data } = await api(url, { method: "POST", body });
    if (response.status === 202) {
      await watch(response.headers.get("Location") || data.url);
    } else if (response.status === 409 && data.job) {
      statusDetail.textContent = data.detail;
      await watch(data.job.url);
    } else {
      statusDetail.textContent = errorList(data).join(" ");
    }
  } finally {
    againButton.disabled = retryButton.disabled = false;
  }
}

function removeAgain() {
  if (!product) return;
  startedAt = performance.now();
  timeline.replaceChildren();
  startAgain(`${product.url}remove-background/`, { options: chosenOptions() });
}

function retry() {
  if (!job) return;
  startedAt = performance.now();
  timeline.replaceChildren();
  startAgain(`${job.url}retry/`, { options: chosenOptions() });
}

function preview() {
  const file = form.elements.photo.files[0];
  if (!file) return;
  if (!form.elements.name.value.trim()) {
    const stem = file.name.replace(/\.[^.]+$/, "").slice(0, 150) || "Product";
    form.elements.name.value = `${stem} ${new Date().toISOString().slice(11, 19)}`;
  }
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  hideAfter();
  showBefore(previewUrl);
}

function slide() {
  compare.style.setProperty("--pos", `${slider.value}%`);
}

form.addEventListener("submit", upload);
form.elements.photo.addEventListener("change", preview);
againButton.addEventListener("click", removeAgain);
retryButton.addEventListener("click", retry);
slider.addEventListener("input", slide);
root.dataset.ready = "true";
