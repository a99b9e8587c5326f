// Throttling for refetches driven by live events: a busy proxy finishes many requests a second,
// and the stats queries behind the Usage and Overview pages must not run once per request.

export interface Throttle<T> {
  /** Offers a new value: delivered at once when the last delivery is `intervalMs` old, else
   * once at the end of the interval (only the latest value offered meanwhile). */
  push(value: T): void;
  /** Drops a pending delivery (the component went away). */
  cancel(): void;
}

/** Delivers pushed values at most once per `intervalMs` (leading and trailing edge). */
export function createThrottle<T>(deliver: (value: T) => void, intervalMs: number): Throttle<T> {
  let lastDelivery = -Infinity;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let pending: { value: T } | undefined;

  const flush = () => {
    timer = undefined;
    if (!pending) return;
    const { value } = pending;
    pending = undefined;
    lastDelivery = Date.now();
    deliver(value);
  };

  return {
    push(value: T) {
      pending = { value };
      if (timer !== undefined) return;
      const wait = lastDelivery + intervalMs - Date.now();
      if (wait <= 0) flush();
      else timer = setTimeout(flush, wait);
    },
    cancel() {
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      pending = undefined;
    },
  };
}
