// usage: node mkksplat.mjs in.ply out.ksplat compressionLevel shDegree
import * as G from '@mkkellogg/gaussian-splats-3d';
import * as fs from 'fs';
const [inp, out, level, sh] = process.argv.slice(2);
const data = fs.readFileSync(inp);
const buf = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
const arr = G.PlyParser.parseToUncompressedSplatArray(buf, parseInt(sh));
const gen = G.SplatBufferGenerator.getStandardGenerator(0, parseInt(level), 0, undefined, 5.0, 256);
const sb = gen.generateFromUncompressedSplatArray(arr);
fs.writeFileSync(out, Buffer.from(sb.bufferData));
console.log('wrote', out, sb.bufferData.byteLength);
