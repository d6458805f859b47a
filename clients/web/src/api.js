// The page's HTTP client for dilseg serve: the /v1 API and the MONAI Label stream routes
// (same origin), bearer key in a header (never in a URL), typed errors with a sentence a
// person can act on, and the dilseg frame format (docs/server.md: "DSF1", uint32 n,
// n bytes of JSON meta, then the raw C-order payload).

export class ApiError extends Error {
  constructor (kind, message, status = 0, detail = '') {
    super(message)
    this.name = 'ApiError'
    this.kind = kind // the engine.errors class name, or Unreachable / Timeout / BadResponse
    this.status = status
    this.detail = detail
  }
}

const DTYPES = {
  float32: Float32Array,
  uint8: Uint8Array,
  int16: Int16Array,
  uint16: Uint16Array,
  int32: Int32Array,
  float64: Float64Array
}

/** Split a dilseg frame into its meta (JSON) and a typed array of its payload. */
export function parseFrame (buffer) {
  const u8 = new Uint8Array(buffer)
  if (u8.length < 8 || u8[0] !== 0x44 || u8[1] !== 0x53 || u8[2] !== 0x46 || u8[3] !== 0x31) {
    throw new ApiError('BadResponse', 'The server sent something that is not a dilseg frame.')
  }
  const n = new DataView(buffer).getUint32(4, true)
  const meta = JSON.parse(new TextDecoder().decode(u8.subarray(8, 8 + n)))
  const Type = DTYPES[meta.dtype]
  if (!Type) throw new ApiError('BadResponse', `Unexpected payload type ${meta.dtype} in a frame.`)
  const bytes = buffer.slice(8 + n) // a copy: aligned for any element size
  return { meta, data: new Type(bytes) }
}

/** numpy.packbits of each mask (big bit order, each padded to whole bytes), concatenated. */
export function packMasks (masks) {
  const per = Math.ceil(masks[0].length / 8)
  const out = new Uint8Array(per * masks.length)
  masks.forEach((m, i) => {
    const base = i * per
    for (let j = 0; j < m.length; j++) {
      if (m[j]) out[base + (j >> 3)] |= 0x80 >> (j & 7)
    }
  })
  return out
}

export class Api {
  constructor (base = '') {
    this.base = base
    this.key = ''
  }

  url (path, query) {
    const u = new URL(this.base + path, window.location.origin)
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v))
    }
    return u
  }

  async request (method, path, { query, body, json, timeoutMs = 300000 } = {}) {
    const headers = {}
    if (this.key) headers.Authorization = `Bearer ${this.key}`
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json'
      body = JSON.stringify(json)
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/octet-stream'
    }
    const ctrl = new AbortController()
    const timer = setTimeout(() => ctrl.abort(), timeoutMs)
    let resp
    try {
      resp = await fetch(this.url(path, query), { method, headers, body, signal: ctrl.signal, cache: 'no-store' })
    } catch (e) {
      if (e.name === 'AbortError') {
        throw new ApiError('Timeout', `The server did not answer ${method} ${path} within ${Math.round(timeoutMs / 1000)} s.`)
      }
      throw new ApiError('Unreachable', `The server at ${window.location.origin} does not answer (${e.message || 'connection failed'}). ` +
        'Is “dilseg serve --web” still running? Start it again, then reload this page.')
    } finally {
      clearTimeout(timer)
    }
    if (!resp.ok) throw await errorOf(resp, method, path)
    return resp
  }

  async json (method, path, opts) {
    const resp = await this.request(method, path, opts)
    return resp.json()
  }

  async frame (method, path, opts) {
    const resp = await this.request(method, path, opts)
    return parseFrame(await resp.arrayBuffer())
  }
}

async function errorOf (resp, method, path) {
  let body = null
  try { body = await resp.json() } catch { /* not JSON */ }
  const kind = (body && body.error) || `HTTP ${resp.status}`
  const said = (body && body.message) || resp.statusText || 'no message'
  let message
  if (resp.status === 401) {
    message = 'The server refused the key (401). Check the key you typed (the token “dilseg keys add” printed), then connect again.'
  } else if (resp.status === 403) {
    message = `This key may not do that (403): ${said}`
  } else if (resp.status === 410) {
    message = `This session is over (410: ${said}). Open the case again.`
  } else if (resp.status === 413) {
    message = `Too large for the server's limits (413): ${said}`
  } else if (resp.status === 503) {
    message = `The server is busy or missing a backend (503): ${said}`
  } else if (resp.status >= 500) {
    message = `The server failed on ${method} ${path} (${resp.status} ${kind}): ${said}`
  } else {
    message = `${kind}: ${said}`
  }
  return new ApiError(kind, message, resp.status, said)
}
