// Talking to the admin API: JSON fetches with the admin token (asked for once on 401, sent as
// Bearer), and the live event stream (EventSource, with the token as `access_token` since
// EventSource cannot send headers; a fetch-based SSE reader where EventSource is missing).

const TOKEN_KEY = "ccf-admin-token";

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public code?: string,
  ) {
    super(message);
  }
}

type TokenListener = (needed: boolean) => void;
const tokenListeners = new Set<TokenListener>();
let tokenWaiters: Array<() => void> = [];
let tokenNeeded = false;

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    /* storage unavailable: keep going without persistence */
  }
  tokenNeeded = false;
  tokenListeners.forEach((l) => l(false));
  const waiters = tokenWaiters;
  tokenWaiters = [];
  waiters.forEach((w) => w());
}

export function onTokenNeeded(listener: TokenListener): () => void {
  tokenListeners.add(listener);
  listener(tokenNeeded);
  return () => tokenListeners.delete(listener);
}

/** Resolves once the user has entered a token (asks only once for all concurrent callers). */
function askForToken(): Promise<void> {
  if (!tokenNeeded) {
    tokenNeeded = true;
    tokenListeners.forEach((l) => l(true));
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function authHeaders(): Record<string, string> {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Fetch with the admin token; on 401 asks for the token and retries. */
export async function apiFetch(path: string, init: RequestInit = {}): Promise<Response> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const response = await fetch(path, {
      ...init,
      headers: { Accept: "application/json", ...(init.headers ?? {}), ...authHeaders() },
    });
    if (response.status !== 401) return response;
    await askForToken();
  }
  throw new ApiError(401, "unauthorized");
}

async function decode<T>(response: Response): Promise<T> {
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok || (body && body.success === false)) {
    const error = body?.error;
    const message =
      typeof error === "string"
        ? error
        : error?.message ?? body?.message ?? `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, typeof error === "object" ? error?.code : undefined);
  }
  return body as T;
}

export async function getJson<T = any>(path: string): Promise<T> {
  return decode<T>(await apiFetch(path));
}

export async function postJson<T = any>(path: string, body?: unknown): Promise<T> {
  return decode<T>(
    await apiFetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? "{}" : JSON.stringify(body),
    }),
  );
}

/** Makes the browser follow `url` as a download: it streams the answer to disk itself. */
function followDownloadLink(url: string) {
  const a = document.createElement("a");
  a.href = url;
  a.download = "";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

/**
 * Downloads the usage export of `query` (see exportLink.ts) as a stream to disk. Without an admin
 * token the export link is followed as it is. With one, the token never goes into a link and the
 * export is never held in memory: a single-use download ticket bound to this query is asked for
 * (an authenticated POST like every call) and the link the server returns, with the ticket, is
 * followed instead.
 */
export async function downloadExport(query: string): Promise<void> {
  let url = `/api/v1/usage/export?${query}`;
  if (getToken()) {
    const answer = await postJson<{ data?: { url?: string } }>(`/api/v1/usage/export/ticket?${query}`);
    if (!answer?.data?.url) throw new ApiError(500, "the server issued no download ticket");
    url = answer.data.url;
  }
  followDownloadLink(url);
}

// ---------------------------------------------------------------------------------------------
// Live stream

export const STREAM_EVENTS = [
  "connection",
  "connections",
  "status",
  "endpoint",
  "endpoints",
  "group",
  "log",
  "chart",
  "suspended",
  "config",
  "message",
] as const;

export interface StreamEvent {
  type: string;
  data: any;
  timestamp?: number;
}

export type StreamState = "connecting" | "open" | "closed";

/** Unwraps `{type, data, timestamp}` envelopes; initial frames carry the data directly. */
export function parseFrame(eventName: string, raw: string): StreamEvent | null {
  let parsed: any;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return null;
  }
  if (parsed && typeof parsed === "object" && "data" in parsed && ("type" in parsed || "timestamp" in parsed)) {
    return { type: parsed.type ?? eventName, data: parsed.data, timestamp: parsed.timestamp };
  }
  return { type: eventName, data: parsed };
}

/** Splits an SSE byte stream into (event, data) frames; exported for unit tests. */
export class SseParser {
  private buffer = "";
  constructor(private onFrame: (event: string, data: string) => void) {}
  push(chunk: string) {
    this.buffer += chunk.replace(/\r\n?/g, "\n");
    let index: number;
    while ((index = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, index);
      this.buffer = this.buffer.slice(index + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) this.onFrame(event, data.join("\n"));
    }
  }
}

/** Opens the stream and reconnects with back-off until `close()` is called. */
export function openStream(
  onEvent: (event: StreamEvent) => void,
  onState: (state: StreamState) => void,
): { close: () => void } {
  let closed = false;
  let source: EventSource | null = null;
  let abort: AbortController | null = null;
  let retry = 500;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const deliver = (name: string, raw: string) => {
    const event = parseFrame(name, raw);
    if (event) onEvent(event);
  };
  const reconnect = () => {
    if (closed) return;
    onState("closed");
    timer = setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10_000);
  };

  const connectFetch = async () => {
    abort = new AbortController();
    try {
      const response = await fetch("/api/v1/stream", {
        headers: { Accept: "text/event-stream", ...authHeaders() },
        signal: abort.signal,
      });
      if (response.status === 401) {
        await askForToken();
        return reconnect();
      }
      if (!response.ok || !response.body) return reconnect();
      onState("open");
      retry = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser(deliver);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } catch {
      /* aborted or network error */
    }
    reconnect();
  };

  const connect = () => {
    if (closed) return;
    onState("connecting");
    if (typeof EventSource === "undefined") {
      void connectFetch();
      return;
    }
    // EventSource cannot send headers: the admin API accepts the token as `access_token` on
    // the stream (and on downloads) for that reason.
    const token = getToken();
    source = new EventSource(token ? `/api/v1/stream?access_token=${encodeURIComponent(token)}` : "/api/v1/stream");
    source.onopen = () => {
      retry = 500;
      onState("open");
    };
    source.onerror = () => {
      source?.close();
      source = null;
      // A 401 shows up as an error: check once with fetch, which will ask for the token.
      void fetch("/api/v1/status", { headers: authHeaders() })
        .then((r) => (r.status === 401 ? askForToken() : undefined))
        .catch(() => undefined)
        .finally(reconnect);
    };
    for (const name of STREAM_EVENTS) {
      source.addEventListener(name, (e) => deliver(name, (e as MessageEvent).data));
    }
  };

  connect();
  return {
    close() {
      closed = true;
      if (timer) clearTimeout(timer);
      source?.close();
      abort?.abort();
    },
  };
}
