// Tiled's websocket subscriptions (/api/v1/stream/single/<path>): a trigger to re-read, so new
// frames, rows and slices show up at once; the poll underneath catches whatever is missed.
import { apiUrl } from "./tiled.js";
import { scheduleRefresh } from "./scheduler.js";
import { state } from "./state.js";

const sockets = new Map(); // path -> {ws, closed, delay, onRows}

// Rows known from websocket messages before the next HTTP read: path -> length along axis 0.
export const streamedRows = new Map();

// Length along axis 0 that a message announces: array-data carries the patch (offset, shape),
// array-ref the whole new shape; null for anything else.
export function rowsFromMessage(msg) {
  if (!msg || !Array.isArray(msg.shape)) return null;
  if (msg.type === "array-data") {
    const offset = Array.isArray(msg.offset) ? msg.offset[0] || 0 : 0;
    return offset + msg.shape[0];
  }
  if (msg.type === "array-ref") return msg.shape[0];
  return null;
}

export function subscribe(path, onRows) {
  if (sockets.has(path)) return;
  const entry = { ws: null, closed: false, delay: 1000, onRows };
  sockets.set(path, entry);
  const open = () => {
    if (entry.closed) return;
    const url = apiUrl(`stream/single/${path}`, { envelope_format: "json" });
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (_e) {
      setTimeout(open, entry.delay);
      return;
    }
    entry.ws = ws;
    ws.onmessage = (event) => {
      state.wsMessages += 1;
      entry.delay = 1000;
      let msg = null;
      try {
        msg = JSON.parse(event.data);
      } catch (_e) {
        msg = null;
      }
      const rows = rowsFromMessage(msg);
      if (rows !== null && rows > (streamedRows.get(path) || 0)) {
        streamedRows.set(path, rows);
        if (onRows) onRows(rows);
      }
      scheduleRefresh(150);
    };
    ws.onclose = () => {
      if (entry.closed) return;
      entry.delay = Math.min(entry.delay * 2, 30000);
      setTimeout(open, entry.delay);
    };
  };
  open();
}

export function unsubscribeAll() {
  for (const entry of sockets.values()) {
    entry.closed = true;
    if (entry.ws) entry.ws.close();
  }
  sockets.clear();
  streamedRows.clear();
}

// After Tiled came back: the subscriptions died with it.
export function resubscribe() {
  const entries = [...sockets.entries()];
  unsubscribeAll();
  for (const [path, entry] of entries) subscribe(path, entry.onRows);
}
