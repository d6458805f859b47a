// The engine's volume on the page.
//
// The server holds an image as a C-order array A of shape (n0, n1, n2) (the caller's
// layout; `axis` is the annotation axis) with an LPS geometry: array axis a runs along
// direction[:, a] with spacing[a], A[0, 0, 0] sits at origin. The page hands NiiVue a
// NIfTI-1 volume whose voxel (i, j, k) is A[i, j, k] (NIfTI stores i fastest, so the
// bytes are A in Fortran order) with the same geometry as a RAS sform, so a NIfTI or NRRD
// file shows in its own orientation. NiiVue keeps its drawing in its RAS voxel order
// (permRAS: which native axis each RAS axis is, negative when flipped); RasMap turns an
// index of A into an index of that order and back, so masks cross between the drawing and
// the server without a full-volume table.

const NIFTI_FLOAT32 = 16
const NIFTI_UINT8 = 2

/** A NIfTI-1 file (ArrayBuffer) of a C-order array with an LPS geometry. */
export function niftiOf (data, shape, geometry, { calMin = 0, calMax = 0 } = {}) {
  const [n0, n1, n2] = shape
  const isFloat = data instanceof Float32Array
  const bpv = isFloat ? 4 : 1
  const nvox = n0 * n1 * n2
  const buf = new ArrayBuffer(352 + nvox * bpv)
  const dv = new DataView(buf)
  dv.setInt32(0, 348, true)
  const dims = [3, n0, n1, n2, 1, 1, 1, 1]
  dims.forEach((v, i) => dv.setInt16(40 + 2 * i, v, true))
  dv.setInt16(70, isFloat ? NIFTI_FLOAT32 : NIFTI_UINT8, true)
  dv.setInt16(72, bpv * 8, true)
  const sp = geometry.spacing
  const pix = [1, sp[0], sp[1], sp[2], 1, 1, 1, 1]
  pix.forEach((v, i) => dv.setFloat32(76 + 4 * i, v, true))
  dv.setFloat32(108, 352, true) // vox_offset
  dv.setFloat32(112, 1, true) // scl_slope
  dv.setFloat32(116, 0, true) // scl_inter
  dv.setUint8(123, 2) // xyzt_units: mm
  dv.setFloat32(124, calMax, true)
  dv.setFloat32(128, calMin, true)
  dv.setInt16(252, 0, true) // qform_code: unknown
  dv.setInt16(254, 2, true) // sform_code: aligned
  const d = geometry.direction
  const o = geometry.origin
  const ras = [-1, -1, 1] // RAS = diag(-1, -1, 1) LPS
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 3; c++) dv.setFloat32(280 + 16 * r + 4 * c, ras[r] * d[r][c] * sp[c], true)
    dv.setFloat32(280 + 16 * r + 12, ras[r] * o[r], true)
  }
  const magic = [0x6e, 0x2b, 0x31, 0x00] // "n+1\0"
  magic.forEach((v, i) => dv.setUint8(344 + i, v))
  const out = isFloat ? new Float32Array(buf, 352, nvox) : new Uint8Array(buf, 352, nvox)
  // A[i, j, k] (C order) -> NIfTI voxel i + n0 (j + n1 k)
  let c = 0
  for (let i = 0; i < n0; i++) {
    for (let j = 0; j < n1; j++) {
      const row = i + n0 * j
      for (let k = 0; k < n2; k++) out[row + n0 * n1 * k] = data[c++]
    }
  }
  return buf
}

/** Index maps between A (C order) and NiiVue's RAS voxel order of a loaded NVImage. */
export class RasMap {
  constructor (shape, nvimage) {
    this.shape = shape
    const perm = nvimage.permRAS // RAS axis p holds native axis |perm[p]| - 1 (1-based, negative: flipped)
    const dimsRAS = nvimage.dimsRAS // [3, d0, d1, d2]
    this.dimsRAS = [dimsRAS[1], dimsRAS[2], dimsRAS[3]]
    const rasStride = [1, this.dimsRAS[0], this.dimsRAS[0] * this.dimsRAS[1]]
    this.rasAxisOf = [0, 0, 0] // native axis -> RAS axis
    this.flipped = [false, false, false] // per native axis
    this.stride = [0, 0, 0] // per native axis: RAS flat index step
    this.base = 0
    for (let p = 0; p < 3; p++) {
      const q = Math.abs(perm[p]) - 1
      this.rasAxisOf[q] = p
      if (perm[p] < 0) {
        this.flipped[q] = true
        this.stride[q] = -rasStride[p]
        this.base += (shape[q] - 1) * rasStride[p]
      } else {
        this.stride[q] = rasStride[p]
      }
    }
  }

  /** RAS flat index of A[a0, a1, a2]. */
  ras (a0, a1, a2) {
    return this.base + a0 * this.stride[0] + a1 * this.stride[1] + a2 * this.stride[2]
  }

  /** NiiVue's fractional position (0..1 per RAS axis) of the centre of A[a0, a1, a2]. */
  frac (a) {
    const f = [0, 0, 0]
    for (let q = 0; q < 3; q++) {
      const p = this.rasAxisOf[q]
      const r = this.flipped[q] ? this.shape[q] - 1 - a[q] : a[q]
      f[p] = (r + 0.5) / this.shape[q]
    }
    return f
  }

  /** Slice index on native axis q from a fractional crosshair position. */
  sliceOf (crosshairPos, q) {
    const n = this.shape[q]
    const r = Math.min(n - 1, Math.max(0, Math.floor(crosshairPos[this.rasAxisOf[q]] * n)))
    return this.flipped[q] ? n - 1 - r : r
  }

  /** Fractional crosshair coordinate (on RAS axis rasAxisOf[q]) of slice z on native axis q. */
  fracOfSlice (z, q) {
    const n = this.shape[q]
    const r = this.flipped[q] ? n - 1 - z : z
    return (r + 0.5) / n
  }

  /** The plane of slice z on axis q: the other two axes in order, row-major (the server's mask layout). */
  planeAxes (q) {
    return [0, 1, 2].filter((d) => d !== q)
  }

  /** Slice z (axis q) of a RAS-ordered bitmap as a 0/1 mask in the server's layout. */
  sliceFromRas (bitmap, z, q) {
    const [u, v] = this.planeAxes(q)
    const nu = this.shape[u]
    const nv = this.shape[v]
    const out = new Uint8Array(nu * nv)
    const a = [0, 0, 0]
    a[q] = z
    let c = 0
    for (let i = 0; i < nu; i++) {
      a[u] = i
      for (let j = 0; j < nv; j++) {
        a[v] = j
        out[c++] = bitmap[this.ras(a[0], a[1], a[2])] > 0 ? 1 : 0
      }
    }
    return out
  }

  /** Write value (where mask, or everywhere with mask null) into slice z (axis q) of a RAS bitmap. */
  fillSliceRas (bitmap, z, q, value, mask = null) {
    const [u, v] = this.planeAxes(q)
    const a = [0, 0, 0]
    a[q] = z
    let c = 0
    for (let i = 0; i < this.shape[u]; i++) {
      a[u] = i
      for (let j = 0; j < this.shape[v]; j++) {
        a[v] = j
        if (!mask || mask[c]) bitmap[this.ras(a[0], a[1], a[2])] = value
        c++
      }
    }
  }
}

/** Paste a frame's crop (C order, meta.bbox) into a full C-order volume; the box written or null. */
export function pasteCrop (volume, shape, meta, data) {
  const bbox = meta.bbox
  if (!bbox) return null
  const [n1, n2] = [shape[1], shape[2]]
  const [[l0, h0], [l1, h1], [l2, h2]] = bbox
  const w2 = h2 - l2
  let c = 0
  for (let a0 = l0; a0 < h0; a0++) {
    for (let a1 = l1; a1 < h1; a1++) {
      const at = (a0 * n1 + a1) * n2 + l2
      volume.set(data.subarray(c, c + w2), at)
      c += w2
    }
  }
  return bbox
}

/** Copy a box of a C-order volume into an NVImage's native (NIfTI, i fastest) voxel array. */
export function toNative (img, volume, shape, bbox) {
  const [n0, n1, n2] = shape
  const box = bbox || [[0, n0], [0, n1], [0, n2]]
  for (let a0 = box[0][0]; a0 < box[0][1]; a0++) {
    for (let a1 = box[1][0]; a1 < box[1][1]; a1++) {
      const row = (a0 * n1 + a1) * n2
      const nat = a0 + n0 * a1
      for (let a2 = box[2][0]; a2 < box[2][1]; a2++) img[nat + n0 * n1 * a2] = volume[row + a2]
    }
  }
}

/** Robust display window: the 0.5th and 99.5th percentile of (a sample of) the image. */
export function displayRange (image) {
  const step = Math.max(1, Math.floor(image.length / 200000))
  const sample = []
  for (let i = 0; i < image.length; i += step) sample.push(image[i])
  sample.sort((x, y) => x - y)
  const lo = sample[Math.floor(sample.length * 0.005)]
  const hi = sample[Math.min(sample.length - 1, Math.floor(sample.length * 0.995))]
  return hi > lo ? [lo, hi] : [lo, lo + 1]
}

/** Dice of two 0/1 masks (1 when both are empty). */
export function dice (a, b) {
  let inter = 0
  let sa = 0
  let sb = 0
  for (let i = 0; i < a.length; i++) {
    sa += a[i]
    sb += b[i]
    inter += a[i] & b[i]
  }
  return sa + sb === 0 ? 1 : (2 * inter) / (sa + sb)
}
