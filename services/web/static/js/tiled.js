// Tiled's HTTP API, read from the browser (anonymous reads; the server lists our origin).
import { config } from "./state.js";

export class TiledHttpError extends Error {
  constructor(status, path, detail) {
    super(`Tiled answered ${status} for ${path}: ${detail}`);
    this.status = status;
    this.path = path;
  }
}
export class TiledDown extends Error {}

let connectionListener = (_up) => {};

// fn(up) is called after every request: true when Tiled answered, false when unreachable.
export function onConnection(fn) {
  connectionListener = fn;
}

export function apiUrl(path, params) {
  const url = new URL(`${config.tiled_url}/api/v1/${path}`);
  for (const [k, v] of Object.entries(params || {})) {
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else if (v !== undefined && v !== null) url.searchParams.set(k, v);
  }
  return url;
}

// fetch() of a Tiled route; a server that cannot be reached (or a gateway error) marks the
// connection down and throws TiledDown, any answer marks it up.
async function fetchTiled(path, params) {
  let resp;
  try {
    resp = await fetch(apiUrl(path, params), { cache: "no-store" });
  } catch (err) {
    connectionListener(false);
    throw new TiledDown(String(err));
  }
  if (resp.status >= 502 && resp.status <= 504) {
    connectionListener(false);
    throw new TiledDown(`HTTP ${resp.status}`);
  }
  connectionListener(true);
  return resp;
}

export async function api(path, params) {
  const resp = await fetchTiled(path, params);
  if (!resp.ok) {
    let detail = "";
    try {
      detail = (await resp.json()).detail;
    } catch (_e) {
      detail = resp.statusText;
    }
    throw new TiledHttpError(resp.status, path, detail);
  }
  return resp.json();
}

// Raw bytes of a node (an ArrayBuffer), with the same connection and error handling as api().
export async function apiBytes(path, params) {
  const resp = await fetchTiled(path, params);
  if (!resp.ok) throw new TiledHttpError(resp.status, path, resp.statusText);
  return resp.arrayBuffer();
}

export async function apiOrNull(path, params) {
  try {
    return await api(path, params);
  } catch (err) {
    if (err instanceof TiledHttpError && err.status === 404) return null;
    throw err;
  }
}

// {key: {family, metadata, shape}} of a container; null when it does not exist (yet).
export async function children(path) {
  const out = {};
  let offset = 0;
  for (;;) {
    const page = await apiOrNull(`search/${path}`, {
      fields: ["metadata", "structure_family", "structure"],
      "page[offset]": offset,
      "page[limit]": 200,
    });
    if (page === null) return null;
    for (const e of page.data) {
      const a = e.attributes;
      out[e.id] = {
        family: a.structure_family,
        metadata: a.metadata || {},
        shape: a.structure && a.structure.shape ? a.structure.shape : null,
      };
    }
    offset += page.data.length;
    if (!page.links.next || page.data.length === 0) return out;
  }
}

export async function readArray(path, slice) {
  return api(`array/full/${path}`, { format: "application/json", slice });
}

export async function readTable(path) {
  return api(`table/full/${path}`, { format: "application/json" });
}

// Per selected run: arrays keyed by path + shape (an array that did not grow is not fetched
// again), outlines, tables. Cleared when the selection changes.
export const cache = new Map();

export async function cachedArray(path, shape, slice) {
  const key = `${path}|${JSON.stringify(shape)}|${slice || ""}`;
  if (cache.has(key)) return cache.get(key);
  const value = await readArray(path, slice);
  cache.set(key, value);
  return value;
}

export async function cached(key, read) {
  if (!cache.has(key)) cache.set(key, await read());
  return cache.get(key);
}
