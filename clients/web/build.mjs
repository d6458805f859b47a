// Builds the page into dist/ (git-ignored): one bundled, minified script (our src/ and
// NiiVue from node_modules), the HTML and the CSS. `dilseg serve --web` serves dist/ as
// it is; nothing is fetched at run time.
import { build } from 'esbuild'
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'

const out = new URL('./dist/', import.meta.url)
await rm(out, { recursive: true, force: true })
await mkdir(out, { recursive: true })
const result = await build({
  entryPoints: [new URL('./src/main.js', import.meta.url).pathname],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  outfile: new URL('./app.js', out).pathname,
  logLevel: 'warning',
  metafile: true,
})
for (const f of ['index.html', 'style.css']) {
  await copyFile(new URL(`./src/${f}`, import.meta.url), new URL(f, out))
}
const pkg = JSON.parse(await readFile(new URL('./package-lock.json', import.meta.url)))
const stamp = {
  built: new Date().toISOString(),
  niivue: pkg.packages['node_modules/@niivue/niivue'].version,
  bytes: Object.fromEntries(Object.entries(result.metafile.outputs).map(([k, v]) => [k.split('/').pop(), v.bytes])),
  lock: createHash('sha256').update(JSON.stringify(pkg)).digest('hex').slice(0, 16),
}
await writeFile(new URL('build.json', out), JSON.stringify(stamp, null, 1) + '\n')
console.log(`clients/web: dist/ built (NiiVue ${stamp.niivue}, app.js ${(stamp.bytes['app.js'] / 1e6).toFixed(2)} MB)`)
