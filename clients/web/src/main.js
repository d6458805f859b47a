// dilseg's annotation page: NiiVue shows the case and holds the drawing; the server
// (same origin, /v1) does everything else. See docs/web.md.
import { Niivue, NVImage, SLICE_TYPE } from '@niivue/niivue'
import { Api, ApiError, packMasks } from './api.js'
import { RasMap, dice, displayRange, niftiOf, pasteCrop, toNative } from './volume.js'

const $ = (id) => document.getElementById(id)
const api = new Api('')
const KEY_STORE = 'dilseg.key' // sessionStorage: gone when the tab closes, never in a URL
const HEARTBEAT_MS = 20000
const PEN = { brush: [1, false], eraser: [0, false], fill: [1, true] }
const LAYER = { image: 0, proxy: 1, result: 2 }

const page = {
  api,
  nv: null,
  info: null,
  auth: null,
  cs: null, // the open case (below)
  busy: false,
  connecting: false,
  rounds: [], // learning progress rows shown on the right
  caseNo: 0,
  errors: [], // every error shown, for tests and the console
  events: [] // what was shown when: {what: 'proxy' | 'result', t, etag}
}
window.dilsegPage = page // for the browser tests and the curious

// ------------------------------------------------------------------ messages
function showError (err, context = '') {
  const msg = err instanceof ApiError ? err.message : (err && err.message) || String(err)
  const text = context ? `${context}: ${msg}` : msg
  page.errors.push({ kind: err && err.kind, status: err && err.status, text })
  $('error-title').textContent = err && err.kind === 'Unreachable' ? 'Server gone' : err && err.status === 401 ? 'Key refused' : 'Error'
  $('error-text').textContent = text
  $('error').hidden = false
  if (err && (err.kind === 'Unreachable' || err.status === 401)) setConn(err.kind === 'Unreachable' ? 'server gone' : 'key refused', 'bad')
  console.error('[dilseg]', text)
}
function clearError () { $('error').hidden = true }
function status (text, busy = false) {
  $('status').textContent = text
  $('status').classList.toggle('busy', busy)
}
function setConn (text, cls) {
  $('conn').textContent = text
  $('conn').className = `conn ${cls}`
}

async function guarded (fn, context) {
  if (page.busy) return
  page.busy = true
  clearError() // a new action: the last error was read
  updateButtons()
  try {
    await fn()
  } catch (e) {
    showError(e, context)
    status('')
  } finally {
    page.busy = false
    updateButtons()
  }
}

// ------------------------------------------------------------------ viewer
async function initViewer () {
  const nv = new Niivue({
    backColor: [0, 0, 0, 1],
    show3Dcrosshair: false,
    crosshairWidth: 0,
    dragAndDropEnabled: false, // drops go to the server, not straight into NiiVue
    isNearestInterpolation: true, // voxels as they are: what is drawn is what is sent
    isOrientationTextVisible: true,
    isColorbar: false,
    logLevel: 'warn',
    loadingText: '',
    penSize: 3,
    sliceType: SLICE_TYPE.AXIAL,
    maxDrawUndoBitmaps: UNDO_DEPTH + 1
  })
  await nv.attachToCanvas($('gl'))
  nv.addColormap('dilseg_result', { R: [0, 0], G: [0, 230], B: [0, 118], A: [0, 255], I: [0, 255] })
  nv.addColormap('dilseg_proxy', { R: [0, 255], G: [0, 200], B: [0, 0], A: [0, 255], I: [0, 255] })
  nv.onLocationChange = () => syncSlice()
  nv.onDrawingChanged = (action) => onDrawn(action)
  page.nv = nv
}

const UNDO_DEPTH = 31 // NiiVue keeps maxDrawUndoBitmaps snapshots: the base and 31 strokes

function onDrawn (action) {
  const cs = page.cs
  if (!cs || action !== 'draw') return
  noteStroke(cs.slice)
}

/** A change of the drawing on slice z (a stroke, a cleared or emptied slice). */
function noteStroke (z) {
  const cs = page.cs
  cs.pending.add(z)
  cs.strokes.push(z)
  if (cs.strokes.length > UNDO_DEPTH) cs.overflow.add(cs.strokes.shift()) // no longer undoable stroke by stroke
  updatePending()
}

/** A fresh undo base: strokes before it are not undone stroke by stroke. */
function resetStrokes () {
  const cs = page.cs
  cs.strokes = []
  cs.overflow = new Set()
  page.nv.drawClearAllUndoBitmaps()
  page.nv.drawAddUndoBitmap()
}

function currentTool () {
  return document.querySelector('input[name=tool]:checked').value
}
function setTool (name) {
  document.querySelector(`input[name=tool][value=${name}]`).checked = true
  applyTool()
}
function applyTool () {
  const nv = page.nv
  if (!nv || !page.cs) return
  const [value, filled] = PEN[currentTool()]
  nv.setPenValue(value, filled)
  nv.opts.penSize = Number($('pen-size').value)
  $('pen-size-out').textContent = $('pen-size').value
}

function applyOverlay () {
  const nv = page.nv
  if (!nv || !page.cs || nv.volumes.length < 3) return
  const a = Number($('opacity').value) / 100
  nv.setOpacity(LAYER.proxy, $('show-proxy').checked ? a : 0)
  nv.setOpacity(LAYER.result, $('show-result').checked ? a : 0)
  nv.setDrawOpacity($('show-drawing').checked ? 0.75 : 0)
}

// ------------------------------------------------------------------ connection
async function connect (key) {
  api.key = key
  page.connecting = true
  clearError()
  try {
    const info = await api.json('GET', '/v1/info', { timeoutMs: 15000 })
    if (key) sessionStorage.setItem(KEY_STORE, key)
    page.info = info
    setConn(`connected · dilseg ${info.version}`, 'on')
    $('steps').value = info.default_steps
    renderEngine()
    await loadStream()
    status('Connected. Open a case of the stream, or drop a NIfTI / NRRD file on the viewer.')
  } catch (e) {
    page.info = null
    if (e.status === 401) sessionStorage.removeItem(KEY_STORE)
    showError(e, 'Connecting')
  } finally {
    page.connecting = false
  }
  updateButtons()
}

async function refreshInfo () {
  if (!page.info) return
  page.info = await api.json('GET', '/v1/info', { timeoutMs: 15000 })
  renderEngine()
}

function renderEngine () {
  const i = page.info
  if (!i) return
  const c = i.counters || {}
  const lam = page.cs && page.cs.fusionWeight !== undefined ? page.cs.fusionWeight : i.fusion_weight
  const rows = [
    ['server', `dilseg ${i.version} · ${i.device}`],
    ['cases', c.cases], ['learning steps', c.steps], ['rounds', c.rounds], ['weights', `v${c.weights_version}`],
    ['model share λ', `${Number(lam).toFixed(2)}<div class="bar"><span style="width:${Math.round(100 * lam)}%"></span></div>`],
    ['sessions open', i.sessions_open], ['proposals', i.default_rule]
  ]
  $('engine').innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd data-k="${k}">${v ?? '–'}</dd>`).join('')
}

async function loadStream () {
  const sel = $('stream')
  const listing = await api.json('GET', '/datastore/', { query: { output: 'all' } })
  const ids = Object.keys(listing.objects || {})
  sel.innerHTML = ids.length
    ? ids.map((id) => {
      const done = 'final' in (listing.objects[id].labels || {})
      return `<option value="${id}">${id}${done ? ' ✓' : ''}</option>`
    }).join('')
    : '<option value="">stream: empty</option>'
  page.stream = listing
}

// ------------------------------------------------------------------ opening a case
async function openStream (imageId) {
  if (!imageId) throw new ApiError('InputError', 'The stream has no image to open.')
  const info = await api.json('POST', '/v1/sessions/datastore', { query: { image: imageId, axis: $('axis').value } })
  await showCase(info, `stream image ${imageId}`)
}

async function openNext () {
  const next = await api.json('POST', '/activelearning/first', { json: {} })
  if (!next || !next.id) {
    status('Every image of the stream has a final label.')
    return
  }
  $('stream').value = next.id
  await openStream(next.id)
}

const VOLUME_EXT = [['.nii.gz', 'nifti'], ['.nii', 'nifti'], ['.nrrd', 'nrrd']]

async function openFile (file) {
  const low = file.name.toLowerCase()
  const hit = VOLUME_EXT.find(([ext]) => low.endsWith(ext))
  if (!hit) {
    throw new ApiError('InputError', `“${file.name}” is not a volume this page can open: drop a NIfTI (.nii, .nii.gz) or NRRD (.nrrd) file.`)
  }
  const body = await file.arrayBuffer()
  status(`uploading ${file.name} (${(body.byteLength / 1e6).toFixed(1)} MB)…`, true)
  let info
  try {
    info = await api.json('POST', '/v1/sessions/file', { query: { format: hit[1], axis: $('axis').value }, body })
  } catch (e) {
    if (e.status === 422) {
      throw new ApiError(e.kind, `“${file.name}” could not be read as a ${hit[1] === 'nrrd' ? 'NRRD' : 'NIfTI'} volume: ${e.detail}`, e.status)
    }
    throw e
  }
  await showCase(info, file.name)
}

async function closeCurrent () {
  const cs = page.cs
  if (!cs) return
  page.cs = null
  clearInterval(cs.heartbeat)
  if (!cs.committed) {
    try { await api.request('DELETE', `/v1/sessions/${cs.sid}`, { timeoutMs: 10000 }) } catch { /* gone already */ }
  }
}

async function showCase (info, name) {
  await closeCurrent()
  status(`loading ${name}…`, true)
  const sid = info.session_id
  const { meta, data } = await api.frame('GET', `/v1/sessions/${sid}/image`)
  const shape = meta.shape
  const axis = info.axis
  const geometry = info.geometry || { spacing: info.spacing, origin: [0, 0, 0], direction: [[1, 0, 0], [0, 1, 0], [0, 0, 1]] }
  const [lo, hi] = displayRange(data)
  const nv = page.nv
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0])
  const bg = await NVImage.new(niftiOf(data, shape, geometry), 'image.nii', 'gray', 1, null, lo, hi, true)
  const n = shape[0] * shape[1] * shape[2]
  const zeros = new Uint8Array(n)
  const proxyImg = await NVImage.new(niftiOf(zeros, shape, geometry), 'proxy.nii', 'dilseg_proxy', 0, null, 0, 1, true)
  const resultImg = await NVImage.new(niftiOf(zeros, shape, geometry), 'result.nii', 'dilseg_result', 0, null, 0, 1, true)
  nv.addVolume(bg)
  nv.addVolume(proxyImg)
  nv.addVolume(resultImg)
  const map = new RasMap(shape, bg)
  checkLayout(map, bg, data, shape)
  const view = [SLICE_TYPE.SAGITTAL, SLICE_TYPE.CORONAL, SLICE_TYPE.AXIAL][map.rasAxisOf[axis]]
  nv.setSliceType(view)
  nv.createEmptyDrawing()
  nv.setDrawingEnabled(true)
  nv.drawClearAllUndoBitmaps()
  nv.drawAddUndoBitmap() // the empty drawing is the first undo base
  page.caseNo += 1
  page.cs = {
    sid, name, shape, axis, geometry, image: data, map, bg, proxyImg, resultImg,
    n: shape[axis],
    slice: 0,
    result: new Uint8Array(n), resultEtag: null, hasResult: false,
    proxy: new Uint8Array(n), proxyEtag: null,
    sent: new Set((info.annotated && info.annotated[String(axis)]) || []),
    pending: new Set(), // slices drawn on since they were last sent
    reopened: new Set(), // pending because a server undo took them back, not because of a stroke
    strokes: [], // the slice of each stroke that Ctrl+Z can still undo, oldest first
    overflow: new Set(), // slices with strokes older than the undo depth
    extent: info.extent ? { first: info.extent[0], last: info.extent[1] } : { first: null, last: null },
    serverExtent: info.extent,
    proposals: [],
    fusionWeight: info.fusion_weight,
    imageId: info.image || null,
    committed: false,
    caseNo: page.caseNo,
    heartbeat: setInterval(heartbeat, HEARTBEAT_MS)
  }
  applyTool()
  applyOverlay()
  $('drop-hint').classList.add('hidden')
  $('slice').disabled = false
  $('slice').max = String(shape[axis] - 1)
  setSlice(Math.floor(shape[axis] / 2))
  $('case-info').textContent = `${name}: ${shape.join(' × ')} voxels, spacing ${geometry.spacing.map((v) => (+v).toFixed(2)).join(' × ')} mm, annotation axis ${axis} (${shape[axis]} slices)`
  renderExtent()
  renderProposals()
  updatePending()
  status(`${name} open. Mark the object's first and last slice, then draw.`)
  await refreshInfo()
}

/** A few voxels of NiiVue's RAS view of the image must be the server's voxels (layout guard). */
function checkLayout (map, bg, data, shape) {
  const ras = bg.img2RAS()
  const [n0, n1, n2] = shape
  for (let t = 0; t < 64; t++) {
    const a = [(t * 7919) % n0, (t * 104729) % n1, (t * 1299709) % n2]
    const want = data[(a[0] * n1 + a[1]) * n2 + a[2]]
    const got = ras[map.ras(a[0], a[1], a[2])]
    if (Math.abs(got - want) > 1e-4 * (1 + Math.abs(want))) {
      throw new Error(`internal layout error: voxel ${a} is ${got} on the page, ${want} on the server`)
    }
  }
}

async function heartbeat () {
  const cs = page.cs
  if (!cs || page.busy) return
  try {
    await api.request('POST', `/v1/sessions/${cs.sid}/heartbeat`, { timeoutMs: 10000 })
    await refreshInfo()
  } catch (e) {
    showError(e, 'Keeping the session alive')
  }
}

// ------------------------------------------------------------------ slices
function setSlice (z) {
  const cs = page.cs
  if (!cs) return
  z = Math.max(0, Math.min(cs.n - 1, Math.round(z)))
  const nv = page.nv
  const pos = nv.scene.crosshairPos
  pos[cs.map.rasAxisOf[cs.axis]] = cs.map.fracOfSlice(z, cs.axis)
  nv.scene.crosshairPos = pos
  nv.drawScene()
  syncSlice()
}

function syncSlice () {
  const cs = page.cs
  if (!cs) return
  cs.slice = cs.map.sliceOf(page.nv.scene.crosshairPos, cs.axis)
  $('slice').value = String(cs.slice)
  const tags = []
  if (cs.sent.has(cs.slice)) tags.push('drawn')
  if (cs.pending.has(cs.slice)) tags.push('unsent')
  if (cs.proposals.includes(cs.slice)) tags.push('proposed')
  if (cs.extent.first === cs.slice) tags.push('first')
  if (cs.extent.last === cs.slice) tags.push('last')
  $('slice-label').textContent = `slice ${cs.slice} / ${cs.n - 1}${tags.length ? ' · ' + tags.join(', ') : ''}`
  for (const b of document.querySelectorAll('button.proposal')) b.classList.toggle('here', Number(b.dataset.z) === cs.slice)
}

function markExtent (which) {
  const cs = page.cs
  if (!cs) return
  cs.extent[which] = cs.slice
  if (cs.extent.first !== null && cs.extent.last !== null && cs.extent.first > cs.extent.last) {
    const { first, last } = cs.extent
    cs.extent = { first: last, last: first }
  }
  renderExtent()
  syncSlice()
  if (cs.extent.first !== null && cs.extent.last !== null) guarded(pushExtent, 'Setting the extent')
}

async function pushExtent () {
  const cs = page.cs
  const { first, last } = cs.extent
  await api.json('PUT', `/v1/sessions/${cs.sid}/extent`, { json: { first, last } })
  cs.serverExtent = [first, last]
  if (!cs.sent.size) {
    const k = Number($('k').value) || 3
    const r = await api.json('GET', `/v1/sessions/${cs.sid}/proposals`, { query: { k } })
    cs.proposals = r.slices
    renderProposals()
    status(`Extent ${first}–${last}. Draw the proposed slices (${r.slices.join(', ')}), then send.`)
  } else {
    status(`Extent ${first}–${last}; sent with the next round.`)
  }
  renderExtent()
}

function renderExtent () {
  const cs = page.cs
  const e = cs ? cs.extent : { first: null, last: null }
  const f = e.first === null ? '?' : e.first
  const l = e.last === null ? '?' : e.last
  $('extent').textContent = e.first === null && e.last === null ? 'not marked' : `slices ${f} – ${l}`
}

function renderProposals () {
  const cs = page.cs
  const box = $('proposals')
  if (!cs || !cs.proposals.length) {
    box.innerHTML = '<span class="muted">Proposed slices appear here after the extent is marked.</span>'
    return
  }
  box.innerHTML = '<span class="muted">next slices:</span> ' + cs.proposals.map((z) =>
    `<button type="button" class="proposal${cs.sent.has(z) ? ' done' : ''}" data-z="${z}">${z}</button>`).join('')
  for (const b of box.querySelectorAll('button.proposal')) b.addEventListener('click', () => setSlice(Number(b.dataset.z)))
  syncSlice()
}

function nextProposal () {
  const cs = page.cs
  if (!cs || !cs.proposals.length) return
  const open = cs.proposals.filter((z) => !cs.sent.has(z) && !cs.pending.has(z))
  const list = open.length ? open : cs.proposals
  const after = list.find((z) => z > cs.slice)
  setSlice(after !== undefined ? after : list[0])
}

function updatePending () {
  const cs = page.cs
  const p = cs ? [...cs.pending].sort((a, b) => a - b) : []
  const s = cs ? [...cs.sent].sort((a, b) => a - b) : []
  $('pending').textContent = (p.length ? `unsent: ${p.join(', ')}` : 'nothing to send') + (s.length ? ` · drawn: ${s.join(', ')}` : '')
  syncSlice()
}

function editSlice (value) {
  const cs = page.cs
  if (!cs) return
  const nv = page.nv
  cs.map.fillSliceRas(nv.drawBitmap, cs.slice, cs.axis, value)
  nv.drawAddUndoBitmap()
  nv.refreshDrawing(true)
  noteStroke(cs.slice)
}

/** The drawn mask of slice z, in the server's layout. */
function sliceMask (z) {
  const cs = page.cs
  return cs.map.sliceFromRas(page.nv.drawBitmap, z, cs.axis)
}

function sliceOfVolume (vol, z) {
  const cs = page.cs
  const [, n1, n2] = cs.shape
  const [u, v] = cs.map.planeAxes(cs.axis)
  const out = new Uint8Array(cs.shape[u] * cs.shape[v])
  const a = [0, 0, 0]
  a[cs.axis] = z
  let c = 0
  for (let i = 0; i < cs.shape[u]; i++) {
    a[u] = i
    for (let j = 0; j < cs.shape[v]; j++) {
      a[v] = j
      out[c++] = vol[(a[0] * n1 + a[1]) * n2 + a[2]]
    }
  }
  return out
}

// ------------------------------------------------------------------ rounds
async function send () {
  const cs = page.cs
  if (!cs) throw new ApiError('StateError', 'Open a case first.')
  const idx = [...cs.pending].sort((a, b) => a - b)
  const extentNew = cs.extent.first !== null && cs.extent.last !== null &&
    !(cs.serverExtent && cs.serverExtent[0] === cs.extent.first && cs.serverExtent[1] === cs.extent.last)
  if (!idx.length && !extentNew && cs.hasResult) {
    status('Nothing new to send: draw on a slice first.')
    return
  }
  if (!idx.length && !cs.sent.size) {
    status('Draw the object on a slice first (or mark a slice empty).')
    return
  }
  const t0 = performance.now()
  if (extentNew) {
    await api.json('PUT', `/v1/sessions/${cs.sid}/extent`, { json: { first: cs.extent.first, last: cs.extent.last } })
    cs.serverExtent = [cs.extent.first, cs.extent.last]
  }
  const agree = []
  if (idx.length) {
    const masks = idx.map((z) => sliceMask(z))
    if (cs.hasResult) {
      idx.forEach((z, i) => { if (!cs.sent.has(z)) agree.push(dice(sliceOfVolume(cs.result, z), masks[i])) })
    }
    status(`sending ${idx.length} slice(s): ${idx.join(', ')}…`, true)
    const r = await api.json('POST', `/v1/sessions/${cs.sid}/slices`, {
      query: { indices: idx.join(','), encoding: 'bits' }, body: packMasks(masks)
    })
    cs.sent = new Set(r.annotated[String(cs.axis)] || [])
    cs.pending.clear()
    cs.reopened.clear()
    resetStrokes()
    updatePending()
  }
  // the proxy first: registration + propagation take milliseconds, learning takes longer
  const pf = await api.frame('GET', `/v1/sessions/${cs.sid}/proxy`, { query: { since: cs.proxyEtag } })
  showLayer('proxy', pf)
  $('show-proxy').checked = true
  applyOverlay()
  const steps = Math.max(0, Number($('steps').value) || 0)
  const k = Math.max(0, Number($('k').value) || 0)
  status(`proxy shown (${ms(pf.meta.timings)}); learning ${steps} steps…`, true)
  const rf = await api.frame('POST', `/v1/sessions/${cs.sid}/round`, { query: { steps, k, since: cs.resultEtag } })
  showLayer('result', rf)
  cs.hasResult = true
  $('show-proxy').checked = false
  $('show-result').checked = true
  applyOverlay()
  cs.proposals = rf.meta.proposals || []
  cs.fusionWeight = rf.meta.fusion_weight
  cs.sent = new Set((rf.meta.annotated && rf.meta.annotated[String(cs.axis)]) || [])
  renderProposals()
  updatePending()
  const t = rf.meta.timings || {}
  const learnMs = t.learn ? (t.learn.total || t.learn.learn || 0) : 0
  page.rounds.push({
    caseNo: cs.caseNo, slices: idx.length, drawn: cs.sent.size, steps, learnMs,
    lam: cs.fusionWeight, agree: agree.length ? agree.reduce((x, y) => x + y, 0) / agree.length : null
  })
  renderRounds()
  await refreshInfo()
  status(`round done in ${((performance.now() - t0) / 1000).toFixed(1)} s (learning ${Math.round(learnMs)} ms); ` +
    (cs.proposals.length ? `next: slices ${cs.proposals.join(', ')} (press n).` : 'commit when the result is right.'))
}

function ms (timings) {
  if (!timings) return ''
  const total = timings.total !== undefined ? timings.total : Object.values(timings).reduce((a, b) => a + (+b || 0), 0)
  return `${Math.round(total)} ms`
}

function showLayer (which, frame) {
  const cs = page.cs
  const vol = which === 'proxy' ? cs.proxy : cs.result
  const img = which === 'proxy' ? cs.proxyImg : cs.resultImg
  if (frame.meta.base === null && frame.meta.bbox) vol.fill(0)
  const box = pasteCrop(vol, cs.shape, frame.meta, frame.data)
  if (which === 'proxy') cs.proxyEtag = frame.meta.etag
  else cs.resultEtag = frame.meta.etag
  if (box) {
    toNative(img.img, vol, cs.shape, box)
    page.nv.updateGLVolume()
  }
  page.events.push({ what: which, t: performance.now(), etag: frame.meta.etag })
}

function renderRounds () {
  const rows = page.rounds.slice(-14).reverse()
  $('rounds').querySelector('tbody').innerHTML = rows.map((r) =>
    `<tr><td>${r.caseNo}</td><td>+${r.slices} (${r.drawn})</td><td>${r.steps} · ${(r.learnMs / 1000).toFixed(1)} s</td>` +
    `<td>${Number(r.lam).toFixed(2)}</td><td>${r.agree === null ? '–' : r.agree.toFixed(2)}</td></tr>`).join('')
}

async function undo () {
  const cs = page.cs
  if (!cs) return
  if (cs.strokes.length) {
    const z = cs.strokes.pop()
    page.nv.drawUndo()
    if (!cs.strokes.includes(z) && !cs.overflow.has(z) && !cs.reopened.has(z)) cs.pending.delete(z)
    updatePending()
    status(`stroke on slice ${z} undone`)
    return
  }
  if (cs.overflow.size) {
    status(`Older strokes (slices ${[...cs.overflow].join(', ')}) cannot be undone one by one: use Clear slice, or send them.`)
    return
  }
  const r = await api.json('POST', `/v1/sessions/${cs.sid}/undo`)
  const now = new Set(r.annotated[String(cs.axis)] || [])
  const back = [...cs.sent].filter((z) => !now.has(z))
  back.forEach((z) => { cs.pending.add(z); cs.reopened.add(z) }) // the drawing stays on the page, unsent: fix it, send again
  cs.sent = now
  cs.serverExtent = r.extent
  if (r.extent) cs.extent = { first: r.extent[0], last: r.extent[1] }
  renderExtent()
  const rf = await api.frame('GET', `/v1/sessions/${cs.sid}/result`, { query: { since: cs.resultEtag } })
  showLayer('result', rf)
  if (cs.sent.size) {
    const pf = await api.frame('GET', `/v1/sessions/${cs.sid}/proxy`, { query: { since: cs.proxyEtag } })
    showLayer('proxy', pf)
  }
  updatePending()
  status(back.length ? `undone on the server: slice ${back.join(', ')} (its drawing is kept, unsent)` : 'undone on the server: the extent')
}

async function commit () {
  const cs = page.cs
  if (!cs) throw new ApiError('StateError', 'Open a case first.')
  if (cs.pending.size) throw new ApiError('StateError', `Slices ${[...cs.pending].join(', ')} are drawn but not sent: send them (Enter) or undo them before committing.`)
  status('committing…', true)
  const r = await api.json('POST', `/v1/sessions/${cs.sid}/commit`)
  cs.committed = true
  await closeCurrent()
  const nv = page.nv
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0])
  nv.drawScene()
  $('drop-hint').classList.remove('hidden')
  $('slice').disabled = true
  $('slice-label').textContent = '–'
  $('case-info').textContent = `${cs.name} committed: the engine has learned ${r.counters.cases} case(s)${r.saved ? ', state saved' : ''}.`
  page.cs = null
  renderProposals()
  renderExtent()
  updatePending()
  await refreshInfo()
  if (page.stream) await loadStream()
  status(`committed ${cs.name} (case ${r.counters.cases} of the engine). Open the next case.`)
}

// ------------------------------------------------------------------ wiring
function updateButtons () {
  const connected = !!page.info
  const open = !!page.cs
  const idle = !page.busy
  $('open-stream').disabled = !(connected && idle && $('stream').value)
  $('next-stream').disabled = !(connected && idle)
  $('file').disabled = !(connected && idle)
  for (const id of ['send', 'undo', 'commit', 'mark-first', 'mark-last', 'clear-slice', 'mark-empty', 'slice-up', 'slice-down']) {
    $(id).disabled = !(open && idle)
  }
}

function wire () {
  $('connect-form').addEventListener('submit', (e) => {
    e.preventDefault()
    connect($('key').value.trim())
  })
  $('error-close').addEventListener('click', clearError)
  $('open-stream').addEventListener('click', () => guarded(() => openStream($('stream').value), 'Opening the stream image'))
  $('next-stream').addEventListener('click', () => guarded(openNext, 'Opening the next stream image'))
  $('stream').addEventListener('change', updateButtons)
  $('file').addEventListener('change', () => {
    const f = $('file').files[0]
    if (f) guarded(() => openFile(f), 'Opening the file')
    $('file').value = ''
  })
  const viewer = $('viewer')
  viewer.addEventListener('dragover', (e) => { e.preventDefault(); viewer.classList.add('dragging') })
  viewer.addEventListener('dragleave', () => viewer.classList.remove('dragging'))
  viewer.addEventListener('drop', (e) => {
    e.preventDefault()
    viewer.classList.remove('dragging')
    const f = e.dataTransfer && e.dataTransfer.files[0]
    if (!f) return
    if (!page.info) {
      showError(new ApiError('StateError', 'Connect to the server (key above) before dropping a file.'))
      return
    }
    guarded(() => openFile(f), 'Opening the dropped file')
  })
  $('slice').addEventListener('input', () => setSlice(Number($('slice').value)))
  $('slice-up').addEventListener('click', () => setSlice(page.cs.slice + 1))
  $('slice-down').addEventListener('click', () => setSlice(page.cs.slice - 1))
  $('mark-first').addEventListener('click', () => markExtent('first'))
  $('mark-last').addEventListener('click', () => markExtent('last'))
  for (const r of document.querySelectorAll('input[name=tool]')) r.addEventListener('change', applyTool)
  $('pen-size').addEventListener('input', applyTool)
  $('clear-slice').addEventListener('click', () => editSlice(0))
  $('mark-empty').addEventListener('click', () => editSlice(0))
  for (const id of ['opacity', 'show-proxy', 'show-result', 'show-drawing']) $(id).addEventListener('input', applyOverlay)
  $('send').addEventListener('click', () => guarded(send, 'Sending'))
  $('undo').addEventListener('click', () => guarded(undo, 'Undoing'))
  $('commit').addEventListener('click', () => guarded(commit, 'Committing'))
  document.addEventListener('keydown', onKey, true)
  window.addEventListener('error', (e) => showError(e.error || e.message, 'Page error'))
  window.addEventListener('unhandledrejection', (e) => showError(e.reason, 'Page error'))
}

function onKey (e) {
  const t = e.target
  const typing = t && (t.tagName === 'INPUT' && !['range', 'checkbox', 'radio'].includes(t.type)) || (t && (t.tagName === 'TEXTAREA' || t.tagName === 'SELECT'))
  if (typing || !page.cs) return
  const cs = page.cs
  let handled = true
  if (e.key === 'ArrowUp' || e.key === 'PageUp') setSlice(cs.slice + 1)
  else if (e.key === 'ArrowDown' || e.key === 'PageDown') setSlice(cs.slice - 1)
  else if (e.key === 'Enter') guarded(send, 'Sending')
  else if ((e.ctrlKey || e.metaKey) && (e.key === 'z' || e.key === 'Z')) guarded(undo, 'Undoing')
  else if (e.ctrlKey || e.metaKey || e.altKey) handled = false
  else if (e.key === 'n') nextProposal()
  else if (e.key === '[') markExtent('first')
  else if (e.key === ']') markExtent('last')
  else if (e.key === 'b') setTool('brush')
  else if (e.key === 'e') setTool('eraser')
  else if (e.key === 'f') setTool('fill')
  else handled = false
  if (handled) {
    e.preventDefault()
    e.stopPropagation()
  }
}

// test hooks: where a voxel of the open case is on the canvas (CSS pixels from its top left)
page.voxelToCanvas = (a) => {
  const cs = page.cs
  const pos = page.nv.frac2canvasPos(cs.map.frac(a))
  if (!pos) return null
  const dpr = page.nv.uiData.dpr || 1
  return [pos[0] / dpr, pos[1] / dpr]
}
page.sliceMask = (z) => Array.from(sliceMask(z))
page.sliceOfResult = (z) => Array.from(sliceOfVolume(page.cs.result, z))
page.sliceOfOverlay = (z) => { // read back from NiiVue's own overlay volume (RAS order)
  const cs = page.cs
  return Array.from(cs.map.sliceFromRas(cs.resultImg.img2RAS(), z, cs.axis))
}

async function main () {
  wire()
  updateButtons()
  try {
    await initViewer()
  } catch (e) {
    showError(new Error(`The viewer needs WebGL2, which this browser does not give (${e.message || e}).`))
    return
  }
  try {
    page.auth = await api.json('GET', '/auth/', { timeoutMs: 15000 })
  } catch (e) {
    showError(e, 'Reaching the server')
    return
  }
  const saved = sessionStorage.getItem(KEY_STORE)
  if (saved) $('key').value = saved
  if (!page.auth.enabled || saved) {
    await connect(saved || '')
  } else {
    status('This server needs a key: type it above and connect.')
    $('key').focus()
  }
}

main()
