// The gateway's API as the pages use it: the key lives in sessionStorage only (gone when the
// tab closes) and travels as "Authorization: Bearer", never in a URL or a cookie.
const KEY = "medops.apiKey";

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

/** An error carrying the gateway's own message and status. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function messageOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`;
}

/** fetch() with the key; a non-2xx answer throws an ApiError with the gateway's message. */
export async function call(path, { method = "GET", body, headers = {}, key } = {}) {
  const apiKey = key ?? storedKey();
  const all = { ...headers };
  if (apiKey) all.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, { method, body, headers: all, credentials: "omit" });
  if (!response.ok) {
    let message = await messageOf(response);
    if (response.status === 401 || response.status === 403) {
      message = `The API key was refused (${response.status}): ${message}`;
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

export async function callJson(path, options = {}) {
  return (await call(path, options)).json();
}

/** Ask which role a key has; throws ApiError when the key is wrong. */
export async function signIn(key) {
  const doc = await callJson("/v1/session", { key });
  storeKey(key);
  return doc.role;
}

/** The upload as one multipart form (several files: one DICOM series). */
export function uploadForm(files) {
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  return form;
}

/** Wire a sign-in form; calls onRole(role) when signed in (also for a key kept this session). */
export function wireSignIn(onRole, showMessage) {
  const form = document.getElementById("signin");
  const input = document.getElementById("api-key");
  const status = document.getElementById("signin-status");
  const out = document.getElementById("signout");
  const signedIn = (role) => {
    status.textContent = `Signed in as ${role}`;
    form.classList.add("signed-in");
    out.hidden = false;
    onRole(role);
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    input.value = "";
    if (!key) {
      showMessage("Type an API key to sign in.");
      return;
    }
    try {
      signedIn(await signIn(key));
      showMessage("");
    } catch (err) {
      forgetKey();
      status.textContent = "Not signed in";
      showMessage(err.message);
    }
  });
  out.addEventListener("click", () => {
    forgetKey();
    window.location.reload();
  });
  const kept = storedKey();
  if (kept) {
    signIn(kept).then(signedIn, () => forgetKey());
  }
}

export function messenger(id) {
  const box = document.getElementById(id);
  return (text, kind = "error") => {
    box.textContent = text;
    box.dataset.kind = kind;
    box.hidden = !text;
  };
}
