// Live state fed by the event stream: pages subscribe to topics and refetch or merge on change.
import { useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { openStream, type StreamEvent, type StreamState } from "./api";
import { createThrottle } from "./throttle";

export interface LogLine {
  seq: number;
  time: number;
  level: string;
  message: string;
  fields: Record<string, unknown>;
}

export interface RequestEvent {
  request_id: string;
  [key: string]: any;
}

interface LiveState {
  stream: StreamState;
  /** Bumped per topic on every event of that kind. */
  versions: Record<string, number>;
  status: any;
  connections: any;
  groups: any;
  logs: LogLine[];
  /** Latest known state of recently seen requests, newest first. */
  requests: RequestEvent[];
}

const MAX_LOGS = 1000;
const MAX_REQUESTS = 200;

let state: LiveState = {
  stream: "connecting",
  versions: {},
  status: null,
  connections: null,
  groups: null,
  logs: [],
  requests: [],
};
const listeners = new Set<() => void>();
let logSeq = 0;

function set(patch: Partial<LiveState>) {
  state = { ...state, ...patch };
  listeners.forEach((l) => l());
}

function bump(topic: string | string[], patch: Partial<LiveState> = {}) {
  const versions = { ...state.versions };
  for (const t of Array.isArray(topic) ? topic : [topic]) versions[t] = (versions[t] ?? 0) + 1;
  set({ ...patch, versions });
}

/** The topic bumped once per request that reached its final outcome (stored stats change). */
export const REQUEST_FINAL_TOPIC = "request_final";

/** Whether a `connection` event reports a request's final outcome (not a progress update). */
export function isFinalRequestEvent(data: any): boolean {
  return Boolean(data?.request_id) && data.is_final === true;
}

function topicOf(type: string): string {
  if (type === "endpoints") return "endpoint";
  if (type === "connections") return "connection";
  return type;
}

function levelOf(data: any): string {
  return String(data?.level ?? data?.lvl ?? "info").toLowerCase();
}

export function handleEvent(event: StreamEvent) {
  const topic = topicOf(event.type);
  const data = event.data ?? {};
  switch (topic) {
    case "status":
      return bump(topic, data.status || data.start_time ? { status: { ...state.status, ...data } } : {});
    case "group":
      return bump(topic, Array.isArray(data.groups) ? { groups: data } : {});
    case "connection": {
      if (data.request_id) {
        const existing = state.requests.find((r) => r.request_id === data.request_id);
        const merged = { ...existing, ...data, _seen: Date.now() };
        const rest = state.requests.filter((r) => r.request_id !== data.request_id);
        const topics = isFinalRequestEvent(data) ? ["request", REQUEST_FINAL_TOPIC] : "request";
        return bump(topics, { requests: [merged, ...rest].slice(0, MAX_REQUESTS) });
      }
      if ("total_requests" in data || "active_connections" in data) {
        return bump(topic, { connections: { ...state.connections, ...data, _at: Date.now() } });
      }
      return bump(topic);
    }
    case "log": {
      const entries = Array.isArray(data) ? data : Array.isArray(data.entries) ? data.entries : [data];
      const lines: LogLine[] = entries.map((entry: any) => {
        const { message, msg, level, lvl, timestamp, time, ...fields } = entry ?? {};
        const ts = time ?? timestamp ?? event.timestamp;
        return {
          seq: ++logSeq,
          time: typeof ts === "number" ? (ts < 1e12 ? ts * 1000 : ts) : ts ? Date.parse(ts) : Date.now(),
          level: levelOf({ level, lvl }),
          message: String(message ?? msg ?? ""),
          fields,
        };
      });
      return bump(topic, { logs: [...state.logs, ...lines].slice(-MAX_LOGS) });
    }
    default:
      return bump(topic);
  }
}

export function clearLogs() {
  set({ logs: [] });
}

let started = false;
export function startLive() {
  if (started) return;
  started = true;
  openStream(handleEvent, (stream) => set({ stream }));
}

export function useLive<T>(select: (s: LiveState) => T): T {
  return useSyncExternalStore(
    (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    () => select(state),
  );
}

/** The version counter of a topic now (outside React; the tests read it). */
export function topicVersion(topic: string): number {
  return state.versions[topic] ?? 0;
}

/** The version counter of a topic: use it as an effect dependency to refetch on change. */
export function useTopic(topic: string): number {
  return useLive((s) => s.versions[topic] ?? 0);
}

/**
 * A topic's version that changes at most once per `intervalMs` (the first change at once, the
 * rest folded into one change at the end of the interval): for refetches of queries too costly
 * to run on every event, like the usage stats on every finished request.
 */
export function useThrottledTopic(topic: string, intervalMs: number): number {
  const version = useTopic(topic);
  const [shown, setShown] = useState(version);
  const throttle = useMemo(() => createThrottle<number>(setShown, intervalMs), [intervalMs]);
  useEffect(() => () => throttle.cancel(), [throttle]);
  useEffect(() => {
    if (version !== shown) throttle.push(version);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [version, throttle]);
  return shown;
}

/** Fetches with `load` whenever `deps` change, debounced, keeping the last good data. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[], debounceMs = 150) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const loadRef = useRef(load);
  loadRef.current = load;
  const [tick, setTick] = useState(0);
  const first = useRef(true);
  useEffect(() => {
    let cancelled = false;
    const run = () => {
      setLoading(true);
      loadRef
        .current()
        .then((d) => {
          if (!cancelled) {
            setData(d);
            setError(null);
          }
        })
        .catch((e) => !cancelled && setError(String(e?.message ?? e)))
        .finally(() => !cancelled && setLoading(false));
    };
    const delay = first.current ? 0 : debounceMs;
    first.current = false;
    const timer = setTimeout(run, delay);
    return () => {
      cancelled = true;
      clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  return { data, error, loading, reload: () => setTick((x) => x + 1) };
}

/** Re-renders every `ms` milliseconds (countdowns, polling). */
export function useInterval(ms: number): number {
  const [n, setN] = useState(0);
  useEffect(() => {
    const id = setInterval(() => setN((x) => x + 1), ms);
    return () => clearInterval(id);
  }, [ms]);
  return n;
}
